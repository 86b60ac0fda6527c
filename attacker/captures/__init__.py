"""The capture store: what the tap recorded, as SQLite rows and feature segment files.

- :mod:`.store`: :class:`CaptureStore` (an SQLite index of requests, replies, heads and deployment
  lists, with features in append-only segment files), ground-truth files, image normalisation.
- :mod:`.segment_file`: the segment files themselves (direct I/O from one staging buffer).
- :mod:`.cli`: ``attacker captures``, what a person reads of a store.
"""

from .store import Capture, CaptureStore, default_store_dir, load_ground_truth_file

__all__ = ["Capture", "CaptureStore", "default_store_dir", "load_ground_truth_file"]
