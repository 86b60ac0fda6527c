"""The benchmark harness: suites as trials (plain data), a results store, executors, reports.

- :mod:`.spec`: :class:`Trial` (target x attack x seed x device, id = hash of the spec) and the
  :class:`Context` a worker gets;
- :mod:`.store`: the SQLite results store (finished trials are not run again);
- :mod:`.executors`: ``local`` (spawned processes, one thread each) and ``ray``;
- :mod:`.report`: ``trials.jsonl``, ``trials.csv``, ``report.md`` and the mean +- std helpers;
- :mod:`.runner`: ``python -m benchmarks run CONFIG`` for the suites in :mod:`benchmarks.suites`.
"""

from .spec import Context, Trial, expand, seeds_of

__all__ = ["Context", "Trial", "expand", "seeds_of"]
