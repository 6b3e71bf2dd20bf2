"""The bottom floor: run-folder file names, safe writes and reads, and which folders may be replaced.

The run folder: every file name in it, created once, replaced only when it is safe.

    runs/<model>-<UTC time>/
        .kerasllm-run     marker: this folder was made by kerasllm (so --overwrite may replace it)
        config.yaml       resolved config (`kerasllm train --config` reproduces the run)
        data.json         where the data came from (absolute paths) and how it was split
        tokenizer.json    (text tasks) the tokenizer; labels.json (image tasks) the classes
        confusion_matrix.png  (image tasks, written by evaluate)
        checkpoints/      step-NNNNNNNN/{model.weights.h5, state.json, seeds.npz[, adapter.npz]}; unfinished ones end in .partial
        logs/             TensorBoard
        model.keras       the trained model (written beside, then renamed into place; LoRA adapters merged)
        adapter.npz       (LoRA fine-tuning) what trained: the adapters and the head
        history.json      per-epoch metrics
        metrics.json      validation metrics before and after training, time, throughput
        curves.png        learning curves
        README.md         model card

A run made from another (a fine-tune's base, a distillation's teacher, a compressed copy's source) records it in
config.yaml and metrics.json by a path relative to its own folder when the two are in the same runs folder
(`../<model>-<time>/model.keras`), so the pair survives moving or renaming that folder (`portable`, `located`).

A run folder is written only once the data has loaded and the model has been built
(`claim_run_dir`), so a failure before that leaves nothing behind; `--overwrite`
replaces only a folder that kerasllm made, and never the current folder, a parent
of it, the data or the input model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from pathlib import Path

from kerasllm.core.errors import UserError

MARKER_FILE = ".kerasllm-run"
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.yaml"
DATA_FILE = "data.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
CURVES_FILE = "curves.png"
CARD_FILE = "README.md"
LIBRARY_LOG_FILE = "library.log"  # what TensorFlow, Keras and the other libraries said during the run (not printed without --debug)
TOKENIZER_FILE = "tokenizer.json"
TARGET_TOKENIZER_FILE = "target_tokenizer.json"  # seq2seq with seq2seq.shared_vocab=false
LABELS_FILE = "labels.json"
CHAT_TEMPLATE_FILE = "chat_template.json"  # (chat runs) the chat template, beside the tokenizer
HUB_TOKENIZER_DIR = "hub_tokenizer"  # (keras-hub preset bases) the preset's tokenizer, saved as a preset
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_WEIGHTS = "model.weights.h5"  # inside checkpoints/step-NNNNNNNN/
CHECKPOINT_STATE = "state.json"
CHECKPOINT_SEEDS = "seeds.npz"  # dropout random-number states
LOGS_DIR = "logs"
EXPORT_DIR = "export"
# what a model needs beside it to be used outside its run (an export carries copies): text in and out, class names
COMPANION_FILES = (TOKENIZER_FILE, TARGET_TOKENIZER_FILE, LABELS_FILE, CHAT_TEMPLATE_FILE, HUB_TOKENIZER_DIR)


def absent(path: Path) -> str:
    """Why `path` cannot be read as the file or folder asked for: "does not exist", or what it is instead (a device such
    as /dev/null, a socket); for messages like f"data path {path} {absent(path)}; pass …"."""
    path = Path(path)
    if not path.exists():
        return "does not exist"
    return "is a folder" if path.is_dir() else "is a file" if path.is_file() else "is not a regular file or folder"


def default_run_dir(model_name: str, root: Path = Path("runs")) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return root / f"{model_name}-{stamp}"


def is_run_dir(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def made_by_kerasllm(path: Path) -> bool:
    """A run folder with the marker, or one made before the marker existed (config + data record)."""
    path = Path(path)
    return (path / MARKER_FILE).is_file() or (is_run_dir(path) and (path / DATA_FILE).is_file())


def check_replaceable(path: Path, protected: list[Path] = ()) -> None:
    """Refuse to delete `path` if it is the current folder, a parent of it, or holds a protected path."""
    target = Path(path).resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise UserError(f"--overwrite would delete {path}, which is the current folder or a parent of it; choose another --out")
    for item in protected:
        item = Path(item).resolve()
        if item == target or target in item.parents:
            raise UserError(f"--overwrite would delete {path}, which holds {item}; choose another --out")


def plan_run_dir(model_name: str, out: Path | None = None, overwrite: bool = False, protected: list[Path] = ()) -> Path:
    """Check (without touching anything) that the run can be written to `out`; return the path."""
    out = Path(out) if out is not None else default_run_dir(model_name)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file, not a folder; choose another --out")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} already exists and is not empty; pass --overwrite to replace it, "
                            "--resume to continue it, or another --out")
        if not made_by_kerasllm(out):
            raise UserError(f"--overwrite replaces only run folders made by kerasllm, and {out} is not one; choose another --out")
        check_replaceable(out, protected)
    return out


def claim_run_dir(out: Path, overwrite: bool = False, model_name: str = "") -> Path:
    """Create the run folder now that every check has passed; an old run is moved aside, then deleted."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite or not made_by_kerasllm(out):
            raise UserError(f"{out} already exists and is not empty; pass --overwrite to replace it or another --out")
        aside = out.with_name(f".{out.name}.replaced-{os.getpid()}")
        try:
            out.rename(aside)
        except OSError as error:
            raise UserError(f"cannot replace {out} ({error.strerror}); check its permissions or choose another --out") from error
        shutil.rmtree(aside, ignore_errors=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / MARKER_FILE, {"model": model_name, "created": dt.datetime.now(dt.timezone.utc).isoformat()})
    except OSError as error:
        raise UserError(f"cannot write the run folder {out} ({error.strerror}); choose a writable --out") from error
    return out


def write_text_atomic(path: Path, text: str) -> None:
    """Write beside, fsync, rename: a reader never sees half a file."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError as error:
        raise UserError(f"cannot write {path} ({error.strerror}); make the folder writable or free some space") from error


def write_json(path: Path, value) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise UserError(f"{path} is missing; the run folder is incomplete") from error
    except ValueError as error:
        raise UserError(f"{path} is corrupt ({error}); restore it or retrain") from error




def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks (lineage records: bases, sources)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


SOURCE_RECORDS = ("compressed_from", "parent")  # metrics.json's records of the run this one came from ({"path", ...})


def portable(path: str, run_dir: Path) -> str:
    """How a run folder records another run it came from: `../NAME/…` when `path` lies in the same runs folder as
    `run_dir` (moving or renaming that folder keeps the pair), anything else (a preset handle, a path elsewhere) as it
    is."""
    if not path or not os.path.isabs(path):
        return path
    runs_folder = Path(run_dir).resolve().parent
    try:
        inside = Path(path).resolve().relative_to(runs_folder)
    except ValueError:
        return path
    return path if inside.parts[:1] == (Path(run_dir).name,) else os.path.join("..", str(inside))


def located(recorded: str, run_dir: Path) -> str:
    """The absolute path of a source that `portable` recorded in `run_dir`."""
    if recorded and recorded.startswith(".." + os.sep):
        return os.path.normpath(os.path.join(os.path.abspath(run_dir), recorded))
    return recorded


def write_metrics(run_dir: Path, summary: dict) -> None:
    """A run's metrics.json, its source records (`SOURCE_RECORDS`) made `portable`."""
    recorded = {key: dict(summary[key], path=portable(summary[key].get("path", ""), run_dir))
                for key in SOURCE_RECORDS if isinstance(summary.get(key), dict)}
    write_json(Path(run_dir) / METRICS_FILE, {**summary, **recorded})


def read_metrics(run_dir: Path) -> dict:
    """A run's metrics.json ({} before it is written), its source records `located` (absolute)."""
    path = Path(run_dir) / METRICS_FILE
    summary = read_json(path) if path.is_file() else {}
    for key in SOURCE_RECORDS:
        if isinstance(summary.get(key), dict) and summary[key].get("path"):
            summary[key] = dict(summary[key], path=located(summary[key]["path"], run_dir))
    return summary
