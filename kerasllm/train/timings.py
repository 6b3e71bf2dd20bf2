"""Where a run's wall-clock time goes: named sections, each counted once.

`Timings.section(name)` times a block; a section opened inside another is taken out of the outer one, and so is
time added with `add` while a section is open, so the sections add up to the wall time they cover. `split` turns
part of a section into named parts (the training loop's steps and its compilation, say). The trainer writes the
result to metrics.json (`timings`), and `bench/nanogpt_cpu.py --profile` prints it.

Example:
    >>> timings = Timings()
    >>> with timings.section("outer"):
    ...     timings.add("inner", 0.0)
    >>> sorted(timings.seconds)
    ['inner', 'outer']
"""

from __future__ import annotations

import contextlib
import os
import time


class Timings:
    """Seconds per named section, exclusive of the sections and additions inside it.

    Args:
        clock: a function that returns seconds (default `time.perf_counter`; tests pass a fake one).
    """

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.seconds: dict[str, float] = {}
        self._open: list[float] = []  # per open section: seconds already counted by something inside it

    def add(self, name: str, seconds: float) -> None:
        """Count `seconds` under `name` (and take them out of the section open now, if any)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        if self._open:
            self._open[-1] += seconds

    @contextlib.contextmanager
    def section(self, name: str):
        started = self.clock()
        self._open.append(0.0)
        try:
            yield
        finally:
            inner = self._open.pop()
            elapsed = self.clock() - started
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed - inner
            if self._open:
                self._open[-1] += elapsed

    def split(self, name: str, parts: dict[str, float]) -> None:
        """Move `parts` (name → seconds) out of section `name`, each at most what is left of it."""
        for part, seconds in parts.items():
            moved = min(max(seconds, 0.0), self.seconds.get(name, 0.0))
            self.seconds[name] = self.seconds.get(name, 0.0) - moved
            self.seconds[part] = self.seconds.get(part, 0.0) + moved

    def profile(self, steps: int, median_step: float, compilation: dict[str, float]) -> dict[str, float]:
        """The run's wall time by section (seconds, metrics.json's `timings`): the training loop split into its steps
        (the median step × `steps`) and the train step's compilation, validation into its compilation (`compilation`:
        "train step compilation", "validation compilation", estimated as their first call beyond a steady one); what
        is left of the loop is "training loop, other"."""
        self.split("training loop", {"train steps": steps * median_step,
                                     **{name: value for name, value in compilation.items() if name.startswith("train")}})
        self.split("validation", {name: value for name, value in compilation.items() if name.startswith("validation")})
        if "training loop" in self.seconds:
            self.seconds["training loop, other"] = self.seconds.pop("training loop")
        return self.as_dict()

    def as_dict(self) -> dict[str, float]:
        return {name: round(seconds, 3) for name, seconds in self.seconds.items()}


def process_seconds() -> float | None:
    """Seconds since this process started (Linux: /proc), or None where that cannot be read."""
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return max(uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"), 0.0)  # field 22, starttime (ticks since boot)
    except (OSError, ValueError, IndexError):
        return None
