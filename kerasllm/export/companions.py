"""The files an export needs beside it: the run's tokenizers, labels and chat template, copied next to the model.

`companion_paths` says where each goes (inside a SavedModel's `assets.extra/`, else beside the file as
`<name>.<file>`); `same` tells a copy already there (another format's export of the same run wrote it) from one that
would be replaced; `copy_over` and `remove` do the file work for `kerasllm.export.formats.export`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kerasllm.core.files import COMPANION_FILES


def companion_paths(run_dir: Path | None, out: Path, fmt: str) -> list[tuple[Path, Path]]:
    """(run file, its copy) for what the exported model needs beside it (tokenizers, labels, chat template): inside a
    SavedModel's `assets.extra/`, else beside the file as `<name>.<file>` (model.tflite → model.tokenizer.json)."""
    if run_dir is None:
        return []
    found = [Path(run_dir) / name for name in COMPANION_FILES if (Path(run_dir) / name).exists()]
    if fmt == "savedmodel":
        return [(path, Path(out) / "assets.extra" / path.name) for path in found]
    return [(path, Path(out).with_name(f"{Path(out).stem}.{path.name}")) for path in found]


def same(source: Path, target: Path) -> bool:
    """`target` is a copy of `source` already (an export in another format of the same run wrote it)."""
    if source.is_dir():
        inside = [path.relative_to(source) for path in source.rglob("*") if path.is_file()]
        return target.is_dir() and all((target / name).is_file() and same(source / name, target / name) for name in inside)
    return target.is_file() and target.stat().st_size == source.stat().st_size and target.read_bytes() == source.read_bytes()


def copy_over(source: Path, target: Path) -> None:
    """`source` (a file or folder) at `target`, whatever was there removed first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove(target)
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
