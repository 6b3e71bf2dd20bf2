"""Trainer hooks: how fine-tuning, pruning and distillation change a run without an edit to the trainer's loop.

The trainer calls each hook at fixed points of a run; every method has a do-nothing default,
so a hook overrides only what it changes. `kerasllm.recipes.finetune.FinetuneHook` is the
built-in one (parent weights, freeze/unfreeze, LoRA adapters).

    build:    before_compile(model, context)      the model is built, inside the strategy's scope
              trained_model(model, context)       the model the loop fits and checkpoints hold (a distiller around
                                                  the run's model); the run's model itself by default
              after_compile(model, context, state) e.g. a resumed run past an unfreezing epoch
    restore:  restores_optimizer(state)           False: the checkpoint's optimizer variables no longer fit
              step_offset(state)                  optimizer steps that ran under an earlier optimizer
    loop:     split_phases(phases)                (first epoch, last epoch, steps, skip) cut where the hook acts
              start_phase(model, first, context)  True when it recompiled the model (the loop is made anew)
    steps:    callbacks() -> list                 Keras callbacks, called before the checkpoint of a step is written
    epochs:   may_be_best(state)                  False: this epoch's weights may not be kept as the best (pruning
                                                  before its final sparsity)
    files:    on_checkpoint_save / on_checkpoint_restore(model, folder), finalize(model, run_dir)
    summary:  summary(model) -> dict              entries for a new run's metrics.json
              results(model) -> dict              entries for metrics.json once training ended (before model.keras)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass
class BuildContext:
    """What a hook may use while the trainer builds and trains: the run's spec, task, config, prepared data and
    strategy, `recompile(schedule_steps, train_config)`, which compiles the model again with a fresh optimizer, and
    `announce(line)`, which tells the user what the hook just did (shown with the rich progress, else nowhere)."""

    spec: Any
    task: Any
    config: Any
    data: Any
    strategy: Any
    recompile: Callable[[int, Any], None]
    announce: Callable[[str], None] = lambda line: None  # one line to the user while training (with the progress)


class Hook:
    """One trainer hook; override the methods you need (see the module docstring for when each runs)."""

    def before_compile(self, model, context: BuildContext) -> None:
        pass

    def trained_model(self, model, context: BuildContext):
        return model

    def after_compile(self, model, context: BuildContext, state) -> None:
        pass

    def restores_optimizer(self, state) -> bool:
        return True

    def step_offset(self, state) -> int:
        return 0

    def split_phases(self, phases: list[tuple]) -> list[tuple]:
        return phases

    def start_phase(self, model, first_epoch: int, context: BuildContext) -> bool:
        return False

    def callbacks(self) -> list:
        return []

    def may_be_best(self, state) -> bool:
        return True

    def on_checkpoint_save(self, model, folder: Path) -> None:
        pass

    def on_checkpoint_restore(self, model, folder: Path) -> None:
        pass

    def summary(self, model) -> dict:
        return {}

    def results(self, model) -> dict:
        return {}

    def finalize(self, model, run_dir: Path) -> None:
        pass


class Hooks(Hook):
    """Several hooks called in order, as one."""

    def __init__(self, hooks=()):
        self.hooks = list(hooks)

    def before_compile(self, model, context):
        for hook in self.hooks:
            hook.before_compile(model, context)

    def trained_model(self, model, context):
        for hook in self.hooks:
            model = hook.trained_model(model, context)
        return model

    def after_compile(self, model, context, state):
        for hook in self.hooks:
            hook.after_compile(model, context, state)

    def restores_optimizer(self, state):
        return all(hook.restores_optimizer(state) for hook in self.hooks)

    def step_offset(self, state):
        return sum(hook.step_offset(state) for hook in self.hooks)

    def split_phases(self, phases):
        for hook in self.hooks:
            phases = hook.split_phases(phases)
        return phases

    def start_phase(self, model, first_epoch, context):
        return any([hook.start_phase(model, first_epoch, context) for hook in self.hooks])  # a list: every hook runs

    def callbacks(self):
        return [callback for hook in self.hooks for callback in hook.callbacks()]

    def may_be_best(self, state):
        return all(hook.may_be_best(state) for hook in self.hooks)

    def results(self, model):
        return {key: value for hook in self.hooks for key, value in hook.results(model).items()}

    def on_checkpoint_save(self, model, folder):
        for hook in self.hooks:
            hook.on_checkpoint_save(model, folder)

    def on_checkpoint_restore(self, model, folder):
        for hook in self.hooks:
            hook.on_checkpoint_restore(model, folder)

    def summary(self, model):
        found = {}
        for hook in self.hooks:
            found.update(hook.summary(model))
        return found

    def finalize(self, model, run_dir):
        for hook in self.hooks:
            hook.finalize(model, run_dir)


NO_HOOKS = Hooks()
