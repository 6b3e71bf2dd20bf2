"""The run loader: a finished or interrupted run read back from its folder (config, data record, artifacts).

Also the checks a command makes before it writes a run: a new run's folder (`plan_new_run`) and what a resume
may change (`check_resume_options`, `check_resume_config`). The folder's layout, its file names and its safe
writes live in `kerasllm.core.files`, floors below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kerasllm import catalog, distribute
from kerasllm.core import config as config_lib
from kerasllm.core.errors import UserError
from kerasllm.core.files import CONFIG_FILE, DATA_FILE, MARKER_FILE, MODEL_FILE, is_run_dir, plan_run_dir, read_json, read_metrics
from kerasllm.core.spec import ModelSpec
from kerasllm.tasks import Task


@dataclass
class Run:
    """A finished or interrupted run, read back from its folder."""

    path: Path
    config: config_lib.RunConfig
    spec: ModelSpec
    data_record: dict
    artifacts: dict = field(default_factory=dict)

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def task(self) -> Task:
        return catalog.task_for(self.spec, self.config.train.objective)


def load_run(path: Path) -> Run:
    path = Path(path)
    if not is_run_dir(path):
        raise UserError(f"{path} is not a run folder (no {CONFIG_FILE}); pass a folder made by `kerasllm train`")
    saved = config_lib.read_config_file(path / CONFIG_FILE)
    made_for = read_json(path / MARKER_FILE).get("model") if (path / MARKER_FILE).is_file() else None
    if made_for and saved.get("model") != made_for:
        raise UserError(f"{path / CONFIG_FILE} is for {saved.get('model')!r} but this run was made for {made_for!r}; "
                        "restore the run's own config.yaml")
    spec = catalog.model(saved.get("model", ""))
    config = config_lib.from_dict(spec, saved)
    data_record = read_json(path / DATA_FILE)
    return Run(path, config, spec, data_record, catalog.task_for(spec, config.train.objective).load_artifacts(path))


def plan_new_run(name: str, out: Path | None, overwrite: bool, protected: list[Path]) -> Path:
    """The run folder to write, checked without touching anything. In a multi-worker job only the chief writes it: the
    other workers take `--out` as it is (the chief may already have made it) and need it to be given."""
    if distribute.chief_in(distribute.tf_config()):
        return plan_run_dir(name, out, overwrite, protected)
    if out is None:
        raise UserError("in a multi-worker job every worker needs the same --out (the chief writes it)")
    return Path(out)


TRAINED_COMPRESSION = ("prune", "distill")  # `kerasllm compress` methods that train a run, which resumes like any other


def check_resume_options(resume: Path, out: Path | None, overwrite: bool, config_file: Path | None) -> Path:
    """`--resume RUN` with the other options: returns the config file to resolve (the run's own unless one is given)."""
    summary = read_metrics(resume)
    source = summary.get("compressed_from") if summary.get("compression", {}).get("method") not in TRAINED_COMPRESSION else None
    if not is_run_dir(resume) and not (source and summary.get("incomplete")):
        raise UserError(f"--resume {resume} is not a run folder (no config.yaml); pass a folder made by `kerasllm train`")
    if out is not None or overwrite:
        raise UserError("--resume continues the run in its own folder; drop --out/--overwrite")
    if source and summary.get("incomplete"):  # `kerasllm compress` was stopped before the copy was whole
        method = summary.get("compression", {}).get("method", "METHOD")
        raise UserError(f"{resume} is a compressed copy of {source.get('path')} that `kerasllm compress` did not finish, with no "
                        f"training to continue; write it again with `kerasllm compress {source.get('path')} --method {method} "
                        f"--out {resume} --overwrite`")
    if source:  # a quantized copy (a pruned or distilled run trained: it resumes)
        raise UserError(f"{resume} is a compressed copy of {source.get('path')} (`kerasllm compress`), with no training to "
                        f"continue; train or fine-tune {source.get('path')}, then compress it again")
    return config_file or Path(resume) / CONFIG_FILE


def check_resume_config(resume: Path, config: config_lib.RunConfig) -> None:
    """A resume may train longer or change how it runs, never what the run is: its model, hyperparameters or data."""
    saved = config_lib.from_dict(catalog.model(config.model), config_lib.read_config_file(Path(resume) / CONFIG_FILE))
    changed = [section for section in ("model", "model_args", "data") if config.to_dict()[section] != saved.to_dict()[section]]
    if changed:
        raise UserError(f"--resume cannot change {', '.join(changed)} of a run; start a new run instead")


def summaries(folder: Path) -> list[dict]:
    """One row per run folder directly inside `folder` (newest first), read from its files without loading TensorFlow:
    name, path, model, task, kind (trained, fine-tuned, compressed), source (a copy's or a fine-tune's), the headline
    metric after training, size on disk, when it was made."""
    import datetime

    found = []  # (when made, row)
    for path in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        if not is_run_dir(path) or not (path / MARKER_FILE).is_file():  # only folders kerasllm made
            continue
        saved = config_lib.read_config_file(path / CONFIG_FILE)
        metrics = read_metrics(path)
        base = saved.get("finetune", {}).get("base") or ""
        source = (metrics.get("compressed_from") or metrics.get("parent") or {}).get("path") or base
        kind = "compressed" if metrics.get("compressed_from") else "fine-tuned" if base else "trained"
        after, task = metrics.get("after_training") or {}, _task(saved)
        key = next((name for name in (task.quality if task else ()) if name in after), next(iter(after), None))
        made = (path / MARKER_FILE).stat().st_mtime
        found.append((made, {"name": path.name, "path": str(path), "model": saved.get("model", ""), "task": task.name if task else "?",
                             "kind": kind, "source": source, "metric": {key: after[key]} if key else {},
                             "complete": (path / MODEL_FILE).is_file() and "after_training" in metrics,
                             "size_bytes": sum(p.stat().st_size for p in path.rglob("*") if p.is_file()),
                             "made": datetime.datetime.fromtimestamp(made, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")}))
    return [row for _, row in sorted(found, key=lambda pair: pair[0], reverse=True)]


def _task(saved: dict):
    """The task a saved config trains (its objective's), or None when its model is not registered here."""
    try:
        spec = catalog.model(saved.get("model", ""))
        return catalog.task_for(spec, saved.get("train", {}).get("objective", ""))
    except UserError:
        return None


def latest(folder: Path, model: str) -> Path:
    """The newest complete run of `model` that trained (not a compressed copy), for scripts: `RUN=$(kerasllm runs --latest M)`."""
    catalog.model(model)  # an unknown name is one line, with a did-you-mean
    found = [row for row in summaries(folder) if row["model"] == model and row["kind"] != "compressed" and row["complete"]]
    if not found:
        raise UserError(f"no finished {model} run in {folder}; train one with `kerasllm train {model}`")
    return Path(found[0]["path"])


def prunable(folder: Path, keep: int, model: str | None = None) -> list[dict]:
    """The runs `kerasllm runs --prune --keep N` deletes (as `summaries` rows, newest first): of each model, every run
    after its newest `keep` (finished or not), among the folders kerasllm made (the marker), but never the source of a
    run that stays (a fine-tune's base, a compressed copy's original)."""
    if keep < 0:
        raise UserError(f"--keep must be 0 or more, not {keep}")
    rows = [row for row in summaries(folder) if model is None or row["model"] == model]
    kept: dict[str, int] = {}
    stays, goes = [], []
    for row in rows:  # newest first
        kept[row["model"]] = kept.get(row["model"], 0) + 1
        (stays if kept[row["model"]] <= keep else goes).append(row)
    sources = [Path(row["source"]).resolve() for row in stays if row["source"]]  # a run folder, or a model file in one
    return [row for row in goes if not any(Path(row["path"]).resolve() in (source, *source.parents) for source in sources)]
