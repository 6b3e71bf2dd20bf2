"""Training progress for people (rich live bars) or scripts (JSON lines), or nothing.

Modes: `rich` draws a bar per epoch with loss, val_loss, throughput and ETA and
prints a sample after each epoch when the task makes one; `json` prints one JSON
object per epoch on stdout; `quiet` prints nothing. When the output is not a terminal
(piped, a CI log), `rich` prints one whole line per epoch instead of a live bar, which
a pipe would get cut at 80 columns.
"""

from __future__ import annotations

import json
import math
import time

import keras

MODES = ("rich", "json", "quiet")
WIDE = 120  # terminal columns from which the live bar shows every column


def _format(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


class Reporter(keras.callbacks.Callback):
    """Keras callback that reports progress.

    Args:
        mode: `rich`, `json` or `quiet`.
        epochs: total epochs of the run.
        steps_per_epoch: batches per epoch.
        items_per_step: tokens or samples per batch, for the throughput.
        unit: name of those items (`tokens`).
        sample: optional `sample(model) -> str` run after each epoch.
        console: a rich Console (default: stdout).
    """

    def __init__(self, mode, epochs, steps_per_epoch, items_per_step, unit, sample=None, console=None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode, self.epochs, self.steps, self.items, self.unit = mode, epochs, steps_per_epoch, items_per_step, unit
        self.sample_fn = sample
        self.console = console
        self.steps_done_at_start = 0  # set by the trainer when resuming inside an epoch
        self.progress = None
        self.stepped = False  # the first call into the graph compiles it (seconds with XLA): the bar says so until then

    def on_train_begin(self, logs=None):
        if self.mode != "rich" or self.progress is not None:
            return
        from rich.console import Console
        from rich.progress import Progress

        self.console = self.console or Console()
        if not self.console.is_terminal:  # piped: whole lines at the end of each epoch (epoch_line), no live bar
            return
        self.progress = Progress(*self.columns(self.console.width), console=self.console)
        self.progress.start()

    @staticmethod
    def columns(width: int) -> list:
        """The live bar's columns for a terminal `width` wide: below `WIDE` columns the speed and the elapsed time go,
        the bar narrows and val_loss reads `val`, so the line stays whole at 80 (a cut column shows `0:00:…`)."""
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        if width >= WIDE:
            return [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]} val_loss {task.fields[val_loss]}"), TextColumn("{task.fields[speed]}"),
                    TimeRemainingColumn(), TimeElapsedColumn()]
        return [TextColumn("{task.description}"), BarColumn(bar_width=max(width - 70, 6)), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]} val {task.fields[val_loss]}"), TimeRemainingColumn()]

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.perf_counter()
        self.offset, self.steps_done_at_start = self.steps_done_at_start, 0
        if self.progress:
            self.description = f"epoch {epoch + 1}/{self.epochs}"
            self.bar = self.progress.add_task(
                self.description + ("" if self.stepped else " (compiling)"), total=self.steps, completed=self.offset,
                loss="-", val_loss="-", speed="",
            )

    def speed(self, steps: int) -> float:
        return steps * self.items / max(time.perf_counter() - self.epoch_start, 1e-9)

    def on_train_batch_end(self, batch, logs=None):
        if self.progress:
            steps = batch + 1
            self.progress.update(self.bar, completed=self.offset + steps, loss=_format((logs or {}).get("loss")),
                                 speed=f"{self.speed(steps):,.0f} {self.unit}/s", description=self.description)
        self.stepped = True

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        sample = self.sample_fn(self.model) if self.sample_fn and self.mode != "quiet" else None
        steps = self.steps - self.offset
        record = {"event": "epoch", "epoch": epoch + 1, **{k: float(v) for k, v in logs.items()},
                  f"{self.unit}_per_second": self.speed(steps), "seconds": time.perf_counter() - self.epoch_start}
        if self.mode == "json":
            print(json.dumps(dict(record, sample=sample) if sample else record), flush=True)
        elif self.mode == "rich":
            if self.progress:
                self.progress.update(self.bar, completed=self.steps, loss=_format(logs.get("loss")),
                                     val_loss=_format(logs.get("val_loss")))
            else:
                self.console.print(self.epoch_line(epoch, logs, record), highlight=False, markup=False)
            if sample:
                self.console.print(f"[dim]sample after epoch {epoch + 1}:[/dim]")
                self.console.print(sample, highlight=False, markup=False)

    def epoch_line(self, epoch: int, logs: dict, record: dict) -> str:
        """One epoch as a whole line (piped output): the numbers the live bar shows."""
        minutes, seconds = divmod(int(record["seconds"]), 60)
        return (f"epoch {epoch + 1}/{self.epochs} {self.steps}/{self.steps} loss {_format(logs.get('loss'))} "
                f"val_loss {_format(logs.get('val_loss'))} {record[f'{self.unit}_per_second']:,.0f} {self.unit}/s "
                f"{minutes}:{seconds:02d}")

    def close(self):
        if self.progress:
            self.progress.stop()
            self.progress = None
