"""The lab: a REST API (FastAPI) for split-point experiments, served by ``attacker serve``.

A researcher submits an experiment spec (:mod:`.spec`); it is stored in SQLite (:mod:`.store`),
queued and run by a bounded worker pool (:mod:`.worker`) through the live edge, tap and cloud
(:mod:`.runner`); results, progress and reconstruction grids (:mod:`.images`) are read back over
``/v1`` (:mod:`.app`) or on the HTML pages (:mod:`.pages`). :mod:`.serve` runs the tap and this API
in one process.
"""
