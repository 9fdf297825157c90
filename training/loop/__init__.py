"""The closed loop: retrain requests in, a gated, promoted router out.

    collect → distil → train (warm start) → evaluate + gate → register (challenger) → promote

(the gateway's replicas follow the ``champion`` alias by themselves)

- :mod:`.state`: a run's persisted state and the request → run index (atomic JSON files);
- :mod:`.coalesce`: which run serves each request (duplicate, joined, covered, new);
- :mod:`.run`: the stages of a run (:class:`~.run.RunExecutor`), on demand or from the worker;
- :mod:`.worker`: the Kafka loop on ``switchyard.retrain.v1`` (``switchyard train worker``).

Hence runs are:

* idempotent: a request already seen (same ``retrain_id``, e.g. redelivered by Kafka after a
  crash) never starts a second run;
* coalescing: requests that arrive while a run for their tasks is pending or running join it;
  a request whose tasks a finished run covered with data collected after the request was made is
  answered by that run; the remaining requests of one poll are merged into one new run;
* resumable: an unfinished run continues from its last completed stage (``switchyard train
  worker`` resumes them at start); Kafka offsets are committed only after the runs finished.
"""
