"""Run one notebook with parameters, as papermill does: a cell with the values is inserted after the cell tagged
`parameters`, then nbclient executes every cell (a failing cell raises).

    python -m tests.notebook_run NOTEBOOK.ipynb '{"EPOCHS": 1}' WORKDIR   # writes WORKDIR/executed.ipynb
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def execute(path: Path, values: dict, workdir: Path) -> Path:
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell("\n".join(f"{key} = {value!r}" for key, value in values.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    notebook.cells.insert(index + 1, injected)
    # the kernel runs this Python; `!kerasllm` finds the console script beside it
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        nbformat.write(notebook, workdir / "executed.ipynb")
    return workdir / "executed.ipynb"


if __name__ == "__main__":
    execute(Path(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3]))
