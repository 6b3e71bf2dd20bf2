"""The model registry: named zoo builders, filled explicitly in one place.

`zoo/__init__.py` registers the built-in families; third-party packages add
theirs through the entry-point group `kerasllm.zoo` (each entry point names a
zero-argument callable that returns a `ModelSpec` or a list of them).

Nothing here imports TensorFlow or Keras, so `kerasllm list` stays fast.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

from kerasllm.errors import UserError

ENTRY_POINT_GROUP = "kerasllm.zoo"
OUTPUTS = ("probabilities", "logits")


@dataclass(frozen=True)
class ModelSpec:
    """Everything the shared trainer and the CLI need to know about one builder.

    Args:
        name: registry name, lower-case with dashes (`lstm-textgen`).
        task: a registered task's name (`kerasllm.tasks.names()`); picks the data pipeline,
            loss, metrics, evaluation and reports.
        hparams: a dataclass type; its fields are the builder's hyperparameters,
            documented with `field(metadata={"help": ...})`.
        build: `build(hparams, data_info) -> keras.Model`; `data_info` carries what
            the data decides (vocabulary size, sequence length, classes).
        default_data: data source used when `--data` is not given.
        description: one line for `kerasllm list`.
        count_params: `count_params(hparams) -> int` computed without TensorFlow,
            at the default data's sizes, for `kerasllm list`.
        defaults: per-section config values this model uses instead of the generic
            defaults (its recipe), e.g. `{"train": {"epochs": 6}, "runtime": {"jit_compile": True}}`.
        presets: named sets of hyperparameter values (`--preset NAME`), e.g. sized
            for MNIST or CIFAR.
        augment: optional `augment(hparams) -> callable | None`, training-only data
            augmentation the task applies in the input pipeline (so saved models
            hold no random ops).
        output: what the model returns, `probabilities` or `logits` (the loss follows).
        decoder: optional `decoder(model) -> kerasllm.generation.Decoder | None`, a fast
            incremental decoder for generation (None: the windowed fallback).
        overfitting_fixes: what to try, for this model, when validation loss rises
            while training loss falls (shown in the summary and the model card).
        head_layers: the layers a fine-tuning run makes new for new labels (the rest is the base that
            `finetune.method=freeze` freezes and `lora` adapts).
        objectives: other training objectives (`train.objective`) and the task each
            trains, e.g. `{"mlm": "masked-lm"}`; the default objective trains `task`.
    """

    name: str
    task: str
    hparams: type
    build: Callable[..., Any]
    default_data: str
    description: str
    count_params: Callable[[Any], int]
    defaults: dict = field(default_factory=dict)
    presets: dict = field(default_factory=dict)
    augment: Callable | None = None
    output: str = "probabilities"
    decoder: Callable | None = None
    overfitting_fixes: tuple = ()
    objectives: dict = field(default_factory=dict)
    head_layers: tuple = ()

    def task_for(self, objective: str = "") -> str:
        """The task that `train.objective` trains ("" or the default objective: `task`)."""
        if not objective or objective == self.default_objective:
            return self.task
        if objective not in self.objectives:
            known = ", ".join([self.default_objective, *self.objectives])
            raise UserError(f"{self.name} has no objective {objective!r}; its objectives: {known}")
        return self.objectives[objective]

    @property
    def default_objective(self) -> str:
        return {"text-generation": "causal-lm", "masked-lm": "mlm"}.get(self.task, "classify")

    def __post_init__(self):
        if self.output not in OUTPUTS:
            raise ValueError(f"{self.name}: output must be one of {', '.join(OUTPUTS)}")
        if not dataclasses.is_dataclass(self.hparams):
            raise ValueError(f"{self.name}: hparams must be a dataclass type")


class Registry:
    """A name → `ModelSpec` mapping that refuses duplicates and explains misses."""

    def __init__(self):
        self._specs: dict[str, ModelSpec] = {}

    def register(self, spec: ModelSpec) -> ModelSpec:
        from kerasllm import tasks

        for task in (spec.task, *spec.objectives.values()):
            if task not in tasks.names():
                raise ValueError(f"{spec.name}: unknown task {task!r}; registered tasks: {', '.join(tasks.names())}")
        if spec.name in self._specs:
            raise ValueError(f"model {spec.name!r} is already registered")
        self._specs[spec.name] = spec
        return spec

    def get(self, name: str) -> ModelSpec:
        if name not in self._specs:
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UserError(
                f"unknown model {name!r}; {hint}known models: {', '.join(self.names())} (see `kerasllm list`)"
            )
        return self._specs[name]

    def names(self) -> list[str]:
        return sorted(self._specs)

    def unregister(self, name: str) -> None:
        """Remove a model (for tests that register throwaway models)."""
        self._specs.pop(name, None)

    def specs(self) -> list[ModelSpec]:
        return [self._specs[n] for n in self.names()]

    def load_entry_points(self, entry_points=None) -> None:
        """Register the specs that installed packages expose under `kerasllm.zoo`."""
        if entry_points is None:
            entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        for entry_point in entry_points:
            provided = entry_point.load()()
            for spec in provided if isinstance(provided, (list, tuple)) else [provided]:
                if not isinstance(spec, ModelSpec):
                    raise TypeError(f"entry point {entry_point.name!r} returned {type(spec).__name__}, not ModelSpec")
                self.register(spec)


_default: Registry | None = None


def default_registry() -> Registry:
    """The registry with the built-in zoo and installed plugins (built once)."""
    global _default
    if _default is None:
        import zoo

        registry = Registry()
        zoo.register_all(registry)
        registry.load_entry_points()
        _default = registry
    return _default


def get(name: str) -> ModelSpec:
    return default_registry().get(name)


def names() -> list[str]:
    return default_registry().names()
