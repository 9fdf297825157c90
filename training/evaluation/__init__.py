"""Evaluation of routers, one module per question:

- :mod:`.compare`: challenger vs champion on the same held-out rows, as served (the retrain gate's
  input; the one place that compares two routers on held-out data);
- :mod:`.gate`: the verdict on such a comparison (pure logic: margins, paired bootstrap);
- :mod:`.kinds`: every router kind and routing rule out of fold, leave-tasks-out first
  (``switchyard train eval kinds``, the report in docs/router.md);
- :mod:`.finetune`: the fine-tuned encoder against the frozen-encoder MLP on the same folds
  (``switchyard train eval finetune``);
- :mod:`.shadow`: a challenger's would-be decisions on recent live traffic (``switchyard train shadow``);
- :mod:`.metrics`: the routing metrics they share (RouteLLM's APGR, CPT, share@q; ECE).
"""
