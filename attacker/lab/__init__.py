"""The lab: a REST API (FastAPI) for split-point experiments, served by ``attacker serve``.

A researcher submits an experiment spec (:mod:`.spec`, attack settings via :mod:`.attacks`); it is
stored in SQLite (:mod:`.store`), queued and run by a bounded worker pool (:mod:`.worker`) through
the live services (:mod:`.runner`: the model trained or reused and each split point deployed by
:mod:`.models_setup`, private images sent through the edge and read back at the tap by
:mod:`.channel`); results, progress and reconstruction grids (:mod:`.images`) are read over ``/v1``
(:mod:`.app`, :mod:`.schemas`) or on the HTML pages (:mod:`.pages`, tables from :mod:`.tables`).
:mod:`.serve` runs the tap and this API in one process. Other kinds of experiment (:mod:`.kinds`)
have a spec, a runner and page sections of their own: membership, attribute and
classifier-inversion (the last two attack one deployment, :mod:`.deployed_target`).
"""
