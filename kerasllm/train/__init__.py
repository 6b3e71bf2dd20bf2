"""The shared trainer and what it is made of: `trainer` (prepare → build → loop → finalize), the two `loops`
(Keras' `fit` and a custom step), `checkpoints` and exact resume, `optimizers` and schedules, the `hooks` interface
that recipes plug into, `timings`, `progress`, the run's `reports` (curves, model card), `diagnostics` (overfitting)
and `memory` (refusing a batch that will not fit). The trainer imports no recipe: fine-tuning, pruning and
distillation hand it their hooks from `kerasllm.recipes`, one floor up.
"""
