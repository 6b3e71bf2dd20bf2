"""The README an export folder gets: one section per export, with a snippet that runs it outside kerasllm (the README
tours in tests/commands/test_tour.py run those snippets for every format, each in a fresh process)."""

import re
import subprocess
import sys
from pathlib import Path


def snippets(folder: Path) -> dict[str, str]:
    text = (folder / "README.md").read_text(encoding="utf-8")
    return dict(re.findall(r"<!-- export: (\S+) -->.*?```python\n(.*?)```", text, re.S))


def run_snippet(folder: Path, code: str) -> str:
    """Run a README snippet in a fresh Python, from the export folder, with no kerasllm module imported by hand."""
    done = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (code, done.stderr[-2000:])
    return done.stdout


def agreement(output: str) -> float:
    return float(re.search(r"top-1 agreement with kerasllm on these \d+ example outputs: ([0-9.]+)", output).group(1))


def test_the_readme_keeps_other_sections_and_never_touches_a_foreign_one(tmp_path):
    from kerasllm.export import guide as export_guide

    for name in ("a.keras", "b.tflite"):
        (tmp_path / name).write_text("x")
        export_guide.write_readme(tmp_path, export_guide.Usage(tmp_path / name, name.split(".")[1], "a.example.json"), "1 KB")
    assert sorted(snippets(tmp_path)) == ["a.keras", "b.tflite"]
    export_guide.write_readme(tmp_path, export_guide.Usage(tmp_path / "a.keras", "keras", "a.example.json"), "2 KB")
    text = (tmp_path / "README.md").read_text()
    assert text.count("## a.keras") == 1 and "## a.keras (keras, 2 KB)" in text and "## b.tflite" in text
    (tmp_path / "b.tflite").unlink()  # a file that is gone loses its section at the next export
    export_guide.write_readme(tmp_path, export_guide.Usage(tmp_path / "a.keras", "keras", "a.example.json"), "2 KB")
    assert sorted(snippets(tmp_path)) == ["a.keras"]

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "README.md").write_text("# my project\n")
    assert export_guide.write_readme(theirs, export_guide.Usage(theirs / "a.keras", "keras", "a.example.json"), "1 KB") is None
    assert (theirs / "README.md").read_text() == "# my project\n"
