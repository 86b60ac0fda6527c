"""The tap: what sits on (or beside) the edge-cloud channel and records it.

One module per part, from the traffic inwards:

- :mod:`.service`: ``attacker tap`` itself (TapConfig, Tap, TapThread, serve): picks the mode and
  ties the parts together.
- :mod:`.relay`: the passive mode's TCP relay (bytes pass unchanged; a copy goes to the recorder).
- :mod:`.proxy`: the proxy mode's gRPC proxy (each call terminated and re-issued upstream).
- :mod:`.sniffer`: the sniff mode's eavesdropper (packet copies, TCP reassembly), out of the path.
- :mod:`.h2parse`: HTTP/2 + gRPC decoding of a connection's byte streams.
- :mod:`.recorder_process`: the decoding recorder in a process of its own (passive mode), and the
  decoder the sniffer shares with it.
- :mod:`.recorder`: batches captures into the capture store (:mod:`attacker.captures`) off the
  traffic's path.
- :mod:`.priority`, :mod:`.heap`: the recording's CPU priority and memory reuse.

None of these import torch: the tap runs (and is tested) on an interpreter without it.
"""

from .service import Tap, TapConfig, TapThread, serve

__all__ = ["Tap", "TapConfig", "TapThread", "serve"]
