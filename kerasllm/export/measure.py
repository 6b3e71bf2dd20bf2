"""What a copy of a model is measured by, beside its source: its size, the agreement of its outputs, its latency, and
real batches of the run's own data to calibrate it on. Exports (`formats`) and compressed copies
(`kerasllm.recipes.compress`) measure the same way."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from kerasllm.core.errors import UserError

LATENCY_REPEATS = 10


def human_size(size: int) -> str:
    return f"{size / 1024**2:,.2f} MB" if size >= 1024**2 else f"{size / 1024:,.1f} KB"


def size_of(path: Path) -> int:
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def agreement(expected: np.ndarray, actual: np.ndarray) -> float:
    """Share of positions whose highest output (top-1 class or next token) is the same."""
    expected, actual = np.asarray(expected), np.asarray(actual)
    if expected.ndim < 2 or expected.shape[-1] < 2:  # one output per example: the sign of a logit
        return float(np.mean((expected > 0) == (actual > 0)))
    return float(np.mean(np.argmax(expected, -1) == np.argmax(actual, -1)))


def median_ms(run, batch, repeats: int = LATENCY_REPEATS, warmups: int = 1) -> float:
    """Median wall time in ms of `run(batch)`, after `warmups` calls (a first call compiles or allocates)."""
    for _ in range(warmups):
        run(batch)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(batch)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def rows_in(batch) -> int:
    """The examples in a batch of model inputs (an array, or a dict of them)."""
    return len(next(iter(batch.values()))) if isinstance(batch, dict) else len(batch)


def calibration_batches(run, like, source: str | None = None, count: int = 16) -> list:
    """Batches of real inputs shaped like `like` (the export's fixed input): the run's training data (its first
    epoch's order), or `source` read the way the run reads its data."""
    import dataclasses

    config = run.config if source is None else dataclasses.replace(run.config, data=dataclasses.replace(run.config.data, source=source))
    data = run.task.prepare(config, run.spec, run.artifacts)
    size = rows_in(like)
    rows = []
    for element in data.train(0, 1, 0).unbatch().take(count * size):
        x = element[0] if isinstance(element, tuple) else element
        rows.append({k: np.asarray(v) for k, v in x.items()} if isinstance(x, dict) else np.asarray(x))
    batches = []
    for start in range(0, len(rows) - size + 1, size):
        group = rows[start:start + size]
        batch = ({k: np.stack([r[k] for r in group]).astype(like[k].dtype) for k in like} if isinstance(like, dict)
                 else np.stack(group).astype(like.dtype))
        shapes = {k: v.shape for k, v in batch.items()} if isinstance(batch, dict) else batch.shape
        wanted = {k: v.shape for k, v in like.items()} if isinstance(like, dict) else like.shape
        if shapes != wanted:
            raise UserError(f"the calibration data gives inputs of shape {shapes}, and the export takes {wanted}; "
                            "pass data prepared like the run's")
        batches.append(batch)
    if not batches:
        raise UserError(f"the calibration data has fewer than {size} examples; pass more")
    return batches
