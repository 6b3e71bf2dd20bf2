"""Tasks: what data, loss, metrics, evaluation, prediction and reports a kind of model uses.

A task is an object (`kerasllm.tasks.base.Task`); the built-in ones are registered
here, in one place, like the zoo's models. Plugins and tests add theirs with
`register(task)`. The trainer and the CLI only talk to tasks through this module,
so a new task needs no edit to `cli.py` or `training.py`.
"""

from __future__ import annotations

import difflib

from kerasllm.errors import UserError
from kerasllm.tasks.base import PreparedData, Task

__all__ = ["PreparedData", "Task", "get", "names", "register"]

_tasks: dict[str, Task] | None = None


def _default_tasks() -> dict[str, Task]:
    global _tasks
    if _tasks is None:
        from kerasllm.tasks.image_classification import ImageClassification
        from kerasllm.tasks.masked_lm import MaskedLM
        from kerasllm.tasks.seq2seq import Seq2Seq
        from kerasllm.tasks.text_classification import TextClassification
        from kerasllm.tasks.text_generation import TextGeneration

        _tasks = {}
        for task in (TextGeneration(), ImageClassification(), TextClassification(), MaskedLM(), Seq2Seq()):
            _tasks[task.name] = task
    return _tasks


def register(task: Task) -> Task:
    """Add a task; a second task with the same name is an error."""
    tasks = _default_tasks()
    if not isinstance(task, Task) or not task.name:
        raise TypeError("register a kerasllm.tasks.Task instance with a name")
    if task.name in tasks:
        raise ValueError(f"task {task.name!r} is already registered")
    tasks[task.name] = task
    return task


def unregister(name: str) -> None:
    """Remove a task (for tests that register throwaway tasks)."""
    _default_tasks().pop(name, None)


def names() -> list[str]:
    return sorted(_default_tasks())


def get(name: str) -> Task:
    tasks = _default_tasks()
    if name not in tasks:
        close = difflib.get_close_matches(name, list(tasks), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"unknown task {name!r}; {hint}known tasks: {', '.join(names())}")
    return tasks[name]
