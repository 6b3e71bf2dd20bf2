"""What a model family declares about itself: `ModelSpec`, the unit of the model registry.

The zoo's modules each define one `SPEC`; `kerasllm.catalog` registers them. Nothing here
imports TensorFlow, Keras or any task, so `kerasllm list` stays fast and the zoo sits
below the tasks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

OUTPUTS = ("probabilities", "logits")


@dataclass(frozen=True)
class ModelSpec:
    """Everything the shared trainer and the CLI need to know about one builder.

    Args:
        name: registry name, lower-case with dashes (`lstm-textgen`).
        task: a registered task's name (`kerasllm.tasks.TASKS`); picks the data pipeline,
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
        sections: the config sections its tasks declare (`Task.config_sections`, e.g. `{"seq2seq": Seq2SeqConfig}`),
            filled in by `kerasllm.catalog` when the model is registered.
        objectives: other training objectives (`train.objective`) and the task each
            trains, e.g. `{"mlm": "masked-lm"}`; the default objective (the task's own, `Task.objective`) trains `task`.
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
    sections: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.output not in OUTPUTS:
            raise ValueError(f"{self.name}: output must be one of {', '.join(OUTPUTS)}")
        if not dataclasses.is_dataclass(self.hparams):
            raise ValueError(f"{self.name}: hparams must be a dataclass type")
