"""Where every command that trains starts its run: the hooks its config asks for, from the registered recipes, then
the trainer.

A recipe that trains is one `Recipe` in `RECIPES`: its name, whether a run's config asks for it (`applies(config)`),
and where its hook class lives (`"module:Class"`, imported only when a run uses it: the hooks import Keras). The hook
is made as `Hook(config, **inputs)`, where `inputs` holds what the command handed over (a fine-tuning base's `parent`
model and `parent_record`), keeping only the names the hook's constructor takes. The trainer takes the hooks it is
given and knows no recipe: a new method (QAT, DPO) is a new module in this wing, one `Recipe` here (or
`RECIPES.registered(...)` from a plugin or a test) and a CLI option.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kerasllm import runs
from kerasllm.core import config as config_lib
from kerasllm.core.errors import RunInterrupted
from kerasllm.core.registry import Registry


@dataclass(frozen=True)
class Recipe:
    """A method that changes how a run trains.

    Args:
        name: the method's name ("finetune", "prune", "distill").
        applies: `applies(config) -> bool`: whether a resolved run config asks for it.
        hook: where its hook class lives, `"package.module:Class"`; it subclasses `kerasllm.train.hooks.Hook`.
        order: hooks run in this order (a pruning run is also a fine-tuning run: fine-tuning's hook goes first).
    """

    name: str
    applies: Callable
    hook: str
    order: int = 100

    def make_hook(self, config, inputs: dict):
        module, _, name = self.hook.partition(":")
        cls = getattr(importlib.import_module(module), name)
        accepted = inspect.signature(cls).parameters
        return cls(config, **{key: value for key, value in inputs.items() if key in accepted})


def _check(recipe) -> None:
    if not isinstance(recipe, Recipe) or ":" not in recipe.hook:
        raise TypeError("register a kerasllm.recipes.runner.Recipe whose hook is 'module:Class'")


RECIPES: Registry[Recipe] = Registry("recipe", check=_check)
for _recipe in (
    Recipe("finetune", lambda config: bool(config.finetune.base), "kerasllm.recipes.finetune:FinetuneHook", order=10),
    Recipe("prune", lambda config: bool(config.finetune.sparsity), "kerasllm.recipes.prune:PruneHook", order=20),
    Recipe("distill", lambda config: bool(config.finetune.teacher), "kerasllm.recipes.distill:DistillHook", order=30),
):
    RECIPES.register(_recipe.name, _recipe)


def hooks_for(config, parent=None, parent_record: dict | None = None):
    """The hooks a run's config asks for, in the recipes' order (`kerasllm.train.hooks.Hooks`)."""
    from kerasllm.train.hooks import Hooks

    inputs = {"parent": parent, "parent_record": parent_record}
    chosen = sorted((recipe for recipe in RECIPES.items() if recipe.applies(config)), key=lambda recipe: recipe.order)
    return Hooks([recipe.make_hook(config, inputs) for recipe in chosen])


def train(config, run_dir: Path, *, parent=None, parent_record: dict | None = None, artifacts: dict | None = None, **options) -> dict:
    """Train a run with the hooks its config asks for (`kerasllm.train.trainer.train`'s options). Ctrl-C (or SIGTERM)
    comes out as `RunInterrupted(run_dir)`, so the command can say how to go on."""
    from kerasllm.train import trainer  # imports Keras and TensorFlow: only commands that train pay for it

    with interruptible(run_dir):
        return trainer.train(config, run_dir, hooks=hooks_for(config, parent, parent_record), artifacts=artifacts, **options)


@contextlib.contextmanager
def interruptible(run_dir: Path):
    """Inside the block, Ctrl-C (KeyboardInterrupt) comes out as `RunInterrupted(run_dir)`."""
    try:
        yield
    except RunInterrupted:
        raise
    except KeyboardInterrupt as error:
        raise RunInterrupted(run_dir) from error


def train_new_run(name: str, found, config, out: Path | None, overwrite: bool, **options) -> Path:
    """Plan a new run folder for a recipe's run (`found`: the `finetune.Base` it starts from) and train it."""
    run_dir = runs.plan_new_run(name, out, overwrite, config_lib.local_paths(config.data.source, found.source))
    train(config, run_dir, overwrite=overwrite, **options)
    return run_dir
