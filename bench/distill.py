"""Distillation, the honest test (#12): a student distilled from a teacher against the same student trained from scratch,
for the same wall-clock budget on the same data, one after the other in one process.

    python bench/distill.py [--task lm|sst2|both] [--data-dir ../shared/data] [--teacher-minutes 12] [--minutes 3]
                            [--teacher RUN]

lm:   teacher transformer-lm `small` (6 × 384, 10.8 M parameters) on tinyshakespeare, windows of 64 characters
      (batch 12, nanoGPT's CPU shape, so that it trains enough steps on a CPU in --teacher-minutes); student
      transformer-lm `tiny` (4 × 128, nanoGPT's CPU config). Score: validation bits/char (the whole split).
sst2: teacher transformer-classifier `tiny` on stsa.binary (best epoch on dev); student lstm-classifier with 32
      embedding dimensions and 32 units. Score: test accuracy (`kerasllm evaluate RUN --data …/stsa.binary`).

The distilled student is `kerasllm compress TEACHER --method distill` (Keras' Distiller through the trainer; T = 2,
alpha = 0.5); the scratch student is `kerasllm train --config` of the distilled run's own config.yaml with the
teacher removed: the same model, data, batch, schedule and `train.max_seconds` = --minutes. Each distilled step also
runs the teacher forward, so it takes fewer steps in the same time; the rows give both step counts. Rows go to
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from common import append_row, budget, kerasllm, machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECTION = "Distillation against the same student from scratch, same wall-clock budget (#12, bench/distill.py)"
HEADER = ["date", "task", "model", "parameters", "budget", "steps", "train seconds", "score", "machine", "command"]


def scratch_config(distilled: Path, folder: Path) -> Path:
    """The distilled run's config with the teacher removed: the same student trained from scratch."""
    config = yaml.safe_load((distilled / "config.yaml").read_text())
    config["finetune"].update(teacher="", teacher_sha256="")
    path = folder / "scratch.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def score(run_dir: Path, task: str, data_dir: Path) -> tuple[str, float]:
    if task == "lm":
        metrics = json.loads((run_dir / "metrics.json").read_text())["after_training"]
        return "validation bits/char", metrics["bits_per_char"]
    out = subprocess.run([sys.executable, "-m", "kerasllm", "evaluate", str(run_dir), "--data", str(data_dir / "sst/stsa.binary"),
                          "--json"], check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return "test accuracy", json.loads(out[out.index("{"):])["accuracy"]


def teacher_command(task: str, data_dir: Path, out: Path, minutes: float) -> list:
    if task == "lm":
        return ["train", "transformer-lm", "--preset", "small", "--data", data_dir / "tinyshakespeare/input.txt", "--out", out, "--quiet",
                "--set", "data.sequence_length=64", "--set", "train.batch_size=12", "--set", "train.sample_length=0",
                "--set", "train.steps_per_epoch=500", "--set", "runtime.steps_per_execution=50", *budget(minutes, 100)]
    return ["train", "transformer-classifier", "--preset", "tiny", "--data", data_dir / "sst/stsa.binary", "--out", out, "--quiet",
            "--set", "data.sequence_length=64", "--set", "train.early_stopping_patience=0", *budget(minutes, 40)]


def student_options(task: str, minutes: float) -> list:
    if task == "lm":
        return ["--student", "tiny", "--set", "data.sequence_length=64", "--set", "train.steps_per_epoch=500", *budget(minutes, 100)]
    return ["--student", "lstm-classifier", "--set", "model_args.embedding_dim=32", "--set", "model_args.units=32", *budget(minutes, 40)]


def bench(task: str, args, folder: Path) -> None:
    data_dir = Path(args.data_dir)
    command = f"python bench/distill.py --task {task} --teacher-minutes {args.teacher_minutes:g} --minutes {args.minutes:g}"
    teacher = Path(args.teacher) if args.teacher else folder / f"{task}-teacher"
    if not args.teacher:
        kerasllm(*teacher_command(task, data_dir, teacher, args.teacher_minutes))
    distilled, scratch = folder / f"{task}-distilled", folder / f"{task}-scratch"
    kerasllm("compress", teacher, "--method", "distill", *student_options(task, args.minutes), "--out", distilled, "--json")
    kerasllm("train", "--config", scratch_config(distilled, folder), "--out", scratch, "--quiet")
    today = dt.date.today().isoformat()
    for label, run_dir in (("teacher", teacher), ("student, distilled", distilled), ("student, from scratch", scratch)):
        metrics = json.loads((run_dir / "metrics.json").read_text())
        name, value = score(run_dir, task, data_dir)
        shown = f"{value:.4f}" if task == "lm" else f"{value:.2%}"
        minutes = args.teacher_minutes if label == "teacher" else args.minutes
        row = [today, task, f"{label}: {metrics['model']}", f"{metrics['parameters']:,}", f"{minutes:g} min", f"{metrics['steps']:,}",
               f"{metrics['train_seconds']:.0f}", f"{name} **{shown}**", machine(), f"`{command}`"]
        print(row, flush=True)
        append_row(SECTION, HEADER, row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("lm", "sst2", "both"), default="both")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--teacher-minutes", type=float, default=12.0)
    parser.add_argument("--minutes", type=float, default=3.0, help="each student's budget")
    parser.add_argument("--teacher", help="an existing teacher run (with --task lm or sst2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        for task in (("lm", "sst2") if args.task == "both" else (args.task,)):
            bench(task, args, Path(scratch))


if __name__ == "__main__":
    main()
