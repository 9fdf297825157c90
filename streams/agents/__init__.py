"""The worker's Faust agents, by domain; each module's ``register(app, wiring)`` adds its own.

* :mod:`.join` — calls + feedback -> outcomes, hard queries, router features, per-task batches;
* :mod:`.monitor` — per-task outcome batches -> window/all-time tables, quality/calibration drift;
* :mod:`.input_drift` — router features -> evidently data-drift checks;
* :mod:`.oncall` — alerts -> the on-call webhook, de-duplicated.
"""
