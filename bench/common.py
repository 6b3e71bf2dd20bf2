"""Shared by the benchmark scripts: running kerasllm, time budgets, the machine's description and appending rows to RESULTS.md."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
ROOT = RESULTS.parent.parent


def kerasllm(*args) -> float:
    """Run `python -m kerasllm ARGS` from the repository root (failing on a non-zero exit); its wall time in seconds."""
    print("running: kerasllm", " ".join(map(str, args)), flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kerasllm", *map(str, args)], check=True, cwd=ROOT)
    return time.perf_counter() - started


def budget(minutes: float, epochs: int) -> list[str]:
    """Options for a run of at most `epochs` epochs and `minutes` of training time."""
    return ["--epochs", str(epochs), "--set", f"train.max_seconds={minutes * 60:g}"]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def append_row(section: str, header: list[str], row: list[str]) -> None:
    """Add `row` under the `## section` table of RESULTS.md, creating the section if needed."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    line = "| " + " | ".join(row) + " |"
    title = f"## {section}"
    if title not in text:
        text = text.rstrip("\n") + f"\n\n{title}\n\n| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
        RESULTS.write_text(text + line + "\n")
        return
    head, _, tail = text.partition(title)
    lines = tail.split("\n")
    end = next((i for i, value in enumerate(lines[1:], 1) if value.startswith("## ")), len(lines))
    while end > 0 and not lines[end - 1].strip():
        end -= 1
    lines.insert(end, line)
    RESULTS.write_text(head + title + "\n".join(lines))
