"""Shared by the benchmark scripts: the machine's description and appending rows to RESULTS.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


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
