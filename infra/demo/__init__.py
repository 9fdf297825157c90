"""``make demo``: the closed loop end to end, unattended, on the local stack.

Needs ``make setup up`` (Kafka + MLflow running). Every process it starts is tracked by PID and
stopped on exit, on failure and on Ctrl-C; logs go to ``.state/demo/<run-id>/``; the report
(markdown + PNG plots) to ``reports/demo/<run-id>/``.

1. train the initial router on the bootstrap data *without* the tasks that appear later
   (``switchyard train run --no-kafka``, ``SWITCHYARD_TRAIN_EXCLUDE_TASKS``), registered in MLflow
   under a per-run model name, alias ``champion``;
2. start the upstream emulator, the gateway (Ray Serve, API key, budgeted exploration), the
   streams worker (webhook to a local receiver) and the retrain worker, on a per-run topic prefix;
3. story (a): replay mixed traffic with feedback: steady, then a new task appears and the cheap
   model answers it wrongly (emulator drift);
4. wait for the drift alert (``switchyard.alerts.v1`` and the webhook) and its evidently report;
5. the retrain worker distils, retrains, gates, promotes and hot-swaps the router into the running
   gateway while traffic continues;
6. replay again: quality on the new task and the savings versus always calling the strong model;
7. story (b): another new task appears, on which the cheap tier is genuinely good (recorded
   answers, no fault); the router sends it to the expensive tier, the gateway explores it, and
   the savings-opportunity notice fires (informational, never paged);
8. the loop's run for that notice's retrain request promotes a new champion that serves;
9. replay again: the task's cost ratio and quality before and after, exploration calls and spend;
10. write the report and print a summary.

Either story can be switched off (``SWITCHYARD_DEMO_DRIFT_STORY``,
``SWITCHYARD_DEMO_OPPORTUNITY_STORY``).

Settings: ``SWITCHYARD_DEMO_*`` (:class:`~infra.demo.settings.DemoSettings`).

Modules: :mod:`.main` runs the steps of :mod:`.steps` in order; :mod:`.processes` starts and stops
the child processes; :mod:`.traffic` replays requests through :mod:`infra.replay`; :mod:`.report`
computes the numbers and writes the report; :mod:`.settings` holds the knobs and the run's ids.
"""
