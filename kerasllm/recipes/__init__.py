"""Recipes: what drives the trainer for a purpose. Each builds its config, its hook (if it trains), its run folder and
its report, and calls the trainer: `finetune` (full, freeze, LoRA), `prune` (magnitude pruning while fine-tuning),
`distill` (a student trained to match a teacher), `compress` (Keras' weight quantization, GPTQ and AWQ, and the
before → after report every compressed copy gets). `runner` is where the commands start a run: it gathers the
hooks a run's config asks for from the registered recipes (`runner.RECIPES`), so a new method is a new module here
and a CLI option, with no edit to the trainer.
"""
