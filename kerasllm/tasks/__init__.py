"""Task definitions: what data, loss, metrics, evaluation and per-epoch samples a task uses.

The shared trainer asks the model's task for these, so a new task (image or text
classification) plugs in here without touching the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class PreparedData:
    """A task's data, ready for the trainer.

    Args:
        info: sizes the builder needs.
        train: `train(first_epoch, epochs, skip_steps) -> tf.data.Dataset` with
            `steps_per_epoch` batches per epoch.
        validation: a finite tf.data.Dataset.
        steps_per_epoch: batches per training epoch.
        items_per_step: throughput unit count per step (tokens or samples).
        unit: name of that unit for progress displays.
        record: how the data was loaded and split (saved as data.json).
        artifacts: objects saved into the run folder with `save(folder)` (a tokenizer).
        sample: optional `sample(model) -> str` shown after each epoch.
    """

    info: Any
    train: Callable
    validation: Any
    steps_per_epoch: int
    items_per_step: int
    unit: str
    record: dict
    artifacts: list = field(default_factory=list)
    sample: Callable | None = None


def get(task: str):
    """The module that implements `task`."""
    if task == "text-generation":
        from kerasllm.tasks import text_generation

        return text_generation
    if task == "image-classification":
        from kerasllm.tasks import image_classification

        return image_classification
    raise ValueError(f"task {task!r} has no implementation yet")
