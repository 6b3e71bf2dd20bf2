"""The run folder: everything later commands need, created once and never overwritten.

    runs/<model>-<UTC time>/
        config.yaml       resolved config (`kerasllm train --config` reproduces the run)
        data.json         where the data came from and how it was split
        tokenizer.json    (text tasks) vocabulary
        checkpoints/      step-NNNNNNNN/{model.weights.h5, optimizer.npz, state.json}
        logs/             TensorBoard
        model.keras       the trained model
        history.json      per-epoch metrics
        metrics.json      validation metrics before and after training
        curves.png        learning curves
        README.md         model card
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from kerasllm import config as config_lib
from kerasllm import registry
from kerasllm.errors import UserError

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.yaml"
DATA_FILE = "data.json"


def new_run_dir(model_name: str, out: Path | None = None, overwrite: bool = False, root: Path = Path("runs")) -> Path:
    """Create the run folder; an existing one is an error unless `overwrite`."""
    if out is None:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        out = root / f"{model_name}-{stamp}"
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} already exists and is not empty; pass --overwrite to replace it, --resume to continue it, or another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_json(path: Path, value) -> None:
    Path(path).write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise UserError(f"{path} is missing; the run folder is incomplete") from error
    except ValueError as error:
        raise UserError(f"{path} is corrupt ({error}); restore it or retrain") from error


def is_run_dir(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


@dataclass
class Run:
    """A finished or interrupted run, read back from its folder."""

    path: Path
    config: config_lib.RunConfig
    spec: registry.ModelSpec
    data_record: dict
    artifacts: dict = field(default_factory=dict)

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE


def load_run(path: Path) -> Run:
    path = Path(path)
    if not is_run_dir(path):
        raise UserError(f"{path} is not a run folder (no {CONFIG_FILE}); pass a folder made by `kerasllm train`")
    saved = config_lib.read_config_file(path / CONFIG_FILE)
    spec = registry.get(saved.get("model", ""))
    config = config_lib.from_dict(spec, saved)
    data_record = read_json(path / DATA_FILE)
    from kerasllm import tasks

    return Run(path, config, spec, data_record, tasks.get(spec.task).load_artifacts(path))
