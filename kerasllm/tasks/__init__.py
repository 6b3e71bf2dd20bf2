"""Tasks: what data, loss, metrics, evaluation, prediction and reports a kind of model uses.

A task is an object (`kerasllm.tasks.base.Task`); the built-in ones are registered
here, in one place, like the zoo's models (`kerasllm.catalog`). Plugins and tests add
theirs with `register(task)` (or `TASKS.registered(name, task)` for a block). The
trainer and the CLI only talk to tasks through this registry, so a new task needs no
edit to `cli.py` or the trainer. No task module imports TensorFlow at import time.
"""

from __future__ import annotations

from kerasllm.core.registry import Registry
from kerasllm.tasks.base import PreparedData, Task
from kerasllm.tasks.chat import Chat
from kerasllm.tasks.image_classification import ImageClassification
from kerasllm.tasks.masked_lm import MaskedLM
from kerasllm.tasks.seq2seq import Seq2Seq
from kerasllm.tasks.text_classification import TextClassification
from kerasllm.tasks.text_generation import TextGeneration

__all__ = ["TASKS", "PreparedData", "Task", "get", "names", "register", "unregister"]


def _check(task) -> None:
    if not isinstance(task, Task) or not task.name:
        raise TypeError("register a kerasllm.tasks.Task instance with a name")


TASKS: Registry[Task] = Registry("task", check=_check)
for _task in (TextGeneration(), ImageClassification(), TextClassification(), MaskedLM(), Seq2Seq(), Chat()):
    TASKS.register(_task.name, _task)


def register(task: Task) -> Task:
    """Add a task; a second task with the same name is an error."""
    _check(task)
    return TASKS.register(task.name, task)


def unregister(name: str) -> None:
    TASKS.unregister(name)


def names() -> list[str]:
    return TASKS.names()


def get(name: str) -> Task:
    return TASKS.get(name)
