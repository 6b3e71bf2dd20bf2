"""The shared trainer and what it is made of: `trainer` (prepare → build → loop → finalize), the two `loops`
(Keras' `fit` and a custom step), `building` (the model, compiled with its optimizer and schedule), `checkpoints` and exact resume, the `hooks` interface
that recipes plug into, `timings`, `progress`, the run's `reports` (its records, curves, model card, the overfitting note)
and `memory` (refusing a batch that will not fit). The trainer imports no recipe: fine-tuning, pruning and
distillation hand it their hooks from `kerasllm.recipes`, one floor up.
"""
