"""The model catalog: the zoo's families and installed plugins, registered in one place.

`zoo/__init__.py` lists the built-in families; third-party packages add theirs through
the entry-point group `kerasllm.zoo` (each entry point names a zero-argument callable
that returns a `ModelSpec` or a list of them). A spec is refused unless every task it
trains is registered (`kerasllm.tasks`). Nothing here imports TensorFlow or Keras, so
`kerasllm list` stays fast.
"""

from __future__ import annotations

import dataclasses
from importlib import metadata

from kerasllm import tasks, zoo
from kerasllm.core.errors import UserError
from kerasllm.core.registry import Registry
from kerasllm.core.spec import ModelSpec
from kerasllm.tasks import Task

ENTRY_POINT_GROUP = "kerasllm.zoo"


def check_spec(spec) -> None:
    """A spec must be a `ModelSpec` whose tasks are registered."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"{type(spec).__name__} is not a ModelSpec")
    for task in (spec.task, *spec.objectives.values()):
        if task not in tasks.TASKS:
            raise ValueError(f"{spec.name}: unknown task {task!r}; registered tasks: {', '.join(tasks.names())}")


def new_registry() -> Registry[ModelSpec]:
    return Registry("model", hint="see `kerasllm list`", check=check_spec)


def with_sections(spec: ModelSpec) -> ModelSpec:
    """`spec` with the config sections its tasks declare (its own task's and its other objectives')."""
    check_spec(spec)
    sections = dict(spec.sections)
    for task_name in (spec.task, *spec.objectives.values()):
        for name, cls in tasks.get(task_name).config_sections.items():
            if sections.setdefault(name, cls) is not cls:
                raise ValueError(f"{spec.name}: two of its tasks declare the config section {name!r}")
    return dataclasses.replace(spec, sections=sections) if sections != spec.sections else spec


def register(registry: Registry[ModelSpec], spec: ModelSpec) -> ModelSpec:
    """Add `spec` (with its tasks' config sections) to `registry`."""
    spec = with_sections(spec)
    return registry.register(spec.name, spec)


def load_entry_points(registry: Registry[ModelSpec], entry_points=None) -> None:
    """Register the specs that installed packages expose under `kerasllm.zoo`."""
    if entry_points is None:
        entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    for entry_point in entry_points:
        provided = entry_point.load()()
        for spec in provided if isinstance(provided, (list, tuple)) else [provided]:
            if not isinstance(spec, ModelSpec):
                raise TypeError(f"entry point {entry_point.name!r} returned {type(spec).__name__}, not ModelSpec")
            register(registry, spec)


_models: Registry[ModelSpec] | None = None


def models() -> Registry[ModelSpec]:
    """The registry of the built-in zoo and installed plugins (built on first use)."""
    global _models
    if _models is None:
        registry = new_registry()
        for spec in zoo.SPECS:
            register(registry, spec)
        load_entry_points(registry)
        _models = registry
    return _models


def model(name: str) -> ModelSpec:
    return models().get(name)


def names() -> list[str]:
    return models().names()


def task_for(spec: ModelSpec, objective: str = "") -> Task:
    """The task that `train.objective` trains: "" or the task's own objective name is `spec.task`."""
    own = tasks.get(spec.task)
    if not objective or objective == own.objective:
        return own
    if objective not in spec.objectives:
        known = ", ".join([own.objective, *spec.objectives])
        raise UserError(f"{spec.name} has no objective {objective!r}; its objectives: {known}")
    return tasks.get(spec.objectives[objective])


def objective_for_task(spec: ModelSpec, task: str) -> str:
    """The `train.objective` that trains `spec` for `task` (`--task chat`): "" for the model's own task."""
    if task == spec.task:
        return ""
    found = [objective for objective, name in spec.objectives.items() if name == task]
    if not found:
        known = ", ".join([spec.task, *spec.objectives.values()])
        raise UserError(f"{spec.name} cannot be trained for the {task} task; its tasks: {known}")
    return found[0]
