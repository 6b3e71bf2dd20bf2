"""Benchmark: SST-2 sentiment, test accuracy of four setups on a CPU time budget (issue #6's table).

    python bench/sst2.py [--data-dir ../shared/data] [--minutes 6] [--pretrain-minutes 10]

(a) `transformer-classifier` (tiny preset) from scratch on stsa.binary.train;
(b) the same model pretrained with masked-LM on unlabelled text available offline (the
    sentences of SST's fine-grained *training* split, labels dropped: the binary training
    sentences plus the neutral ones; no dev or test sentence), then fine-tuned (full);
(c) the base from (b) fine-tuned with LoRA (rank 8, query/value adapters + head);
(d) `lstm-classifier` from scratch.

Each run trains on stsa.binary.train, selects its best epoch on stsa.binary.dev and is
scored once on stsa.binary.test (`kerasllm evaluate RUN --data …/stsa.binary`). Each has
`train.max_seconds` = --minutes (pretraining: --pretrain-minutes). The rows, with the
trainable-parameter share, the training and wall time, accuracy and macro-F1, go to
bench/RESULTS.md. Anchor: Kim (2014) CNN-rand 82.7 % on the same split.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import append_row, budget, machine

HERE = Path(__file__).resolve().parent
SHORT = ["--set", "data.sequence_length=64", "--set", "train.early_stopping_patience=0"]


def run(command: list[str]) -> float:
    print("running:", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def test_scores(run_dir: Path, sst: Path) -> dict:
    out = subprocess.run(["kerasllm", "evaluate", str(run_dir), "--data", str(sst), "--json"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out[out.index("{"):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(HERE.parent.parent / "shared/data"))
    parser.add_argument("--minutes", type=float, default=6.0, help="training budget of each classifier")
    parser.add_argument("--pretrain-minutes", type=float, default=10.0, help="masked-LM pretraining budget")
    parser.add_argument("--only", default="abcd", help="which setups to run (pretraining runs with b or c)")
    args = parser.parse_args()
    data_dir = Path(args.data_dir)
    sst = data_dir / "sst" / "stsa.binary"
    work = Path(tempfile.mkdtemp(prefix="sst2-"))
    corpus = work / "sst_fine_train_sentences.txt"
    corpus.write_text("\n".join(line.partition(" ")[2] for line in (data_dir / "sst/stsa.fine.train").read_text().splitlines()))
    runs, walls = {}, {}
    base = work / "mlm"
    if "b" in args.only or "c" in args.only:
        walls["mlm"] = run(["kerasllm", "train", "transformer-classifier", "--preset", "tiny", "--objective", "mlm", "--data", str(corpus),
                            "--out", str(base), "--quiet", *SHORT, *budget(args.pretrain_minutes, 40),
                            "--set", "train.learning_rate=1e-3", "--set", "data.validation_fraction=0.05"])
    setups = {
        "a": ("(a) transformer-classifier tiny, from scratch", 20,
              ["kerasllm", "train", "transformer-classifier", "--preset", "tiny", "--data", str(sst)]),
        "b": ("(b) (a) pretrained with masked-LM, then fine-tuned (full)", 10,
              ["kerasllm", "finetune", str(base), "--data", str(sst), "--method", "full"]),
        "c": ("(c) the (b) base, LoRA rank 8", 20,
              ["kerasllm", "finetune", str(base), "--data", str(sst), "--method", "lora", "--lora-rank", "8",
               "--set", "train.learning_rate=2e-3"]),
        "d": ("(d) lstm-classifier, from scratch", 10,
              ["kerasllm", "train", "lstm-classifier", "--data", str(sst)]),
    }
    for key in args.only:
        label, epochs, command = setups[key]
        runs[key] = work / key
        walls[key] = run([*command, "--out", str(runs[key]), "--quiet", *SHORT, *budget(args.minutes, epochs)])
    pretrain = json.loads((base / "metrics.json").read_text()) if "mlm" in walls else None
    for key in args.only:
        label = setups[key][0]
        metrics = json.loads((runs[key] / "metrics.json").read_text())
        scores = test_scores(runs[key], sst)
        counts = metrics["parameter_counts"]
        extra = ""
        if key in "bc" and pretrain:
            extra = (f" + pretraining {pretrain['train_seconds']:.0f} s ({pretrain['steps']} steps, masked-token accuracy "
                     f"{pretrain['after_training']['accuracy']:.3f})")
        print(f"{label}: test accuracy {scores['accuracy']:.4f}, macro-F1 {scores['macro_f1']:.4f}")
        append_row(
            "SST-2 sentiment (stsa.binary: train → best epoch on dev → test), 2 CPU cores",
            ["date", "setup", "trainable / total parameters", "epochs (steps)", "train seconds", "wall", "test accuracy",
             "test macro-F1", "machine", "command"],
            [dt.date.today().isoformat(), label, f"{counts['trainable']:,} / {counts['total']:,} ({counts['trainable_share']:.2%})",
             f"{metrics['epochs_completed']} ({metrics['steps']})", f"{metrics['train_seconds']:.0f}{extra}", f"{walls[key]:.0f} s",
             f"**{scores['accuracy']:.2%}**", f"{scores['macro_f1']:.4f}", machine(),
             f"`python bench/sst2.py --minutes {args.minutes:g} --pretrain-minutes {args.pretrain_minutes:g}`"],
        )


if __name__ == "__main__":
    sys.exit(main())
