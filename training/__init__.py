"""Training: producing routers, offline and in the closed loop. One module per stage:

- data and features: :mod:`.data` (benchmark loaders), :mod:`.splits` (folds by prompt hash and
  by task), :mod:`.embeddings` (the frozen-encoder cache);
- training: :mod:`.train` (heads, calibration, the artefact), :mod:`.cascade` (the cascade's
  answer scorer), :mod:`.finetune` (a fine-tuned encoder);
- evaluation: :mod:`.evaluation` (compare two routers, the gate, kinds and rules, shadow mode);
- registry: :mod:`.registry` (MLflow runs, versions, aliases), :mod:`.promote` (alias moves and
  the hot swap of a running gateway);
- the closed loop: :mod:`.collect` (bootstrap rows + Kafka outcomes), :mod:`.distill` (labels
  from the strong model and a judge), :mod:`.loop` (run state, coalescing, stages, the worker);
- :mod:`.settings` (``TrainSettings``) and :mod:`.cli` (``switchyard train``, ``switchyard router``).
"""
