"""Benchmarks for seq2seq (issue #7's results): Multi30k en→de translation and SciTLDR-A summarization on 2 CPU cores.

    python bench/seq2seq.py multi30k [--data-dir ../shared/data] [--minutes 30] [--checkpoint-minutes 10] [--models transformer,lstm]
    python bench/seq2seq.py scitldr  [--data-dir ../shared/data] [--minutes 10]

multi30k: trains `transformer-seq2seq --preset small` (and `lstm-seq2seq`) on `train`, selects the best
epoch on `val` (validation loss), and reports sacreBLEU (detokenized, cased) and chrF on `test_2016_flickr`
for the checkpoint nearest --checkpoint-minutes and for the final model, plus decoding speed
(sentences/s) greedy and with beam 4.

scitldr: ROUGE-1/2/L (F, best over each paper's references) on the test split for (a) lead-1 (the
abstract's first sentence), (b) `transformer-seq2seq` trained on the train split (abstract → TLDR),
(c) an extractive scorer: `lstm-classifier` trained on the train split's sentences with the dataset's
`source_labels` (oracle sentence or not), picking each test abstract's most likely sentence.
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

from common import append_row, machine

HERE = Path(__file__).resolve().parent


def run(command: list[str]) -> float:
    print("running:", " ".join(map(str, command)), flush=True)
    started = time.perf_counter()
    subprocess.run([str(c) for c in command], check=True)
    return time.perf_counter() - started


def load(run_dir: Path, checkpoint: Path | None = None):
    """The run and its model (optionally with a checkpoint's weights)."""
    from kerasllm import runs
    from kerasllm.core.quiet import load_tensorflow
    from kerasllm.export.saving import load_model

    load_tensorflow()
    model = load_model(run_dir / "model.keras")
    if checkpoint is not None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.load_weights(checkpoint / "model.weights.h5")
    return runs.load_run(run_dir), model


def nearest_checkpoint(run_dir: Path, seconds: float) -> tuple[Path, dict]:
    found = []
    for folder in sorted((run_dir / "checkpoints").glob("step-*")):
        state = json.loads((folder / "state.json").read_text())
        found.append((abs(state["train_seconds"] - seconds), folder, state))
    _, folder, state = min(found, key=lambda item: item[0])
    return folder, state


def multi30k(args) -> None:
    data = Path(args.data_dir) / "multi30k"
    test = f"{data / 'test_2016_flickr.en.gz'},{data / 'test_2016_flickr.de.gz'}"
    work = Path(tempfile.mkdtemp(prefix="multi30k-"))
    common = ["--data", data, "--set", "seq2seq.source_lang=en", "--set", "seq2seq.target_lang=de", "--set", "data.sequence_length=32",
              "--set", "seq2seq.target_length=32", "--set", f"train.max_seconds={args.minutes * 60:g}", "--set",
              "train.early_stopping_patience=0", "--set", "train.keep_checkpoints=0", "--set", "train.checkpoint_every_steps=200",
              "--quiet"]
    # epochs sized so that the learning-rate schedule ends near the budget (~0.9 s and ~0.5 s per step of 64 pairs here)
    epochs = {"transformer": max(1, round(args.minutes * 60 / 0.9 / 453)), "lstm": max(1, round(args.minutes * 60 / 0.5 / 453))}
    models = {"transformer": ["transformer-seq2seq", "--preset", "small", "--epochs", epochs["transformer"]],
              "lstm": ["lstm-seq2seq", "--epochs", epochs["lstm"]]}
    for key in args.models.split(","):
        out = Path(args.run_dir) if args.run_dir else work / key
        wall = run(["kerasllm", "train", *models[key], "--out", out, *common]) if not args.run_dir else args.wall
        metrics = json.loads((out / "metrics.json").read_text())
        checkpoint, state = nearest_checkpoint(out, args.checkpoint_minutes * 60)
        rows = []
        for label, weights, seconds in ((f"~{args.checkpoint_minutes:g} min", checkpoint, state["train_seconds"]),
                                        (f"end: {metrics['epochs_completed']} epochs (best)", None, metrics["train_seconds"])):
            loaded_run, model = load(out, weights)
            greedy = loaded_run.task.evaluate(model, loaded_run, data=test)
            beam = loaded_run.task.evaluate(model, loaded_run, data=test, beam=4) if weights is None else None
            rows.append((label, seconds, greedy, beam))
            print(f"{key} {label}: BLEU {greedy['bleu']:.2f} greedy" + (f", {beam['bleu']:.2f} beam 4" if beam else ""), flush=True)
        for label, seconds, greedy, beam in rows:
            append_row(
                "Multi30k en→de, test_2016_flickr (sacreBLEU detokenized, cased), 2 CPU cores",
                ["date", "model", "training", "train seconds", "BLEU greedy", "BLEU beam 4", "chrF greedy", "sentences/s greedy",
                 "sentences/s beam 4", "parameters", "wall", "machine", "command"],
                [dt.date.today().isoformat(), metrics["model"] + (" small" if key == "transformer" else ""), label, f"{seconds:.0f}",
                 f"**{greedy['bleu']:.2f}**", f"{beam['bleu']:.2f}" if beam else "–", f"{greedy['chrf']:.2f}",
                 f"{greedy['sentences_per_second']:.1f}", f"{beam['sentences_per_second']:.1f}" if beam else "–",
                 f"{metrics['parameters']:,}", f"{wall:.0f} s", machine(),
                 f"`python bench/seq2seq.py multi30k --minutes {args.minutes:g} --models {key}`"])
        print("BLEU signature:", rows[-1][2]["bleu_signature"])


def scitldr(args) -> None:
    from kerasllm.evaluation import text_scores

    data = Path(args.data_dir) / "scitldr"
    test = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines() if line.strip()]
    references = [row["target"] for row in test]
    work = Path(tempfile.mkdtemp(prefix="scitldr-"))
    results = {"(a) lead-1 (first sentence)": (text_scores([row["source"][0].strip() for row in test], references, rouge=True), 0.0)}

    out = work / "abstractive"
    wall = run(["kerasllm", "train", "transformer-seq2seq", "--preset", "tiny", "--data", data, "--out", out, "--quiet", "--epochs", "60",
                "--set", "data.sequence_length=256", "--set", "seq2seq.target_length=48", "--set", "model_args.max_sequence_length=256",
                "--set", "train.batch_size=16", "--set", f"train.max_seconds={args.minutes * 60:g}", "--set",
                "train.early_stopping_patience=0"])
    loaded_run, model = load(out)
    hypotheses = loaded_run.task.translate(model, loaded_run, [" ".join(row["source"]) for row in test], beam=4)
    results["(b) transformer-seq2seq tiny, abstract → TLDR, beam 4"] = (text_scores(hypotheses, references, rouge=True), wall)

    sentences = work / "sentences.csv"
    import csv

    with open(sentences, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for line in (data / "train.jsonl").read_text().splitlines():
            row = json.loads(line)
            for sentence, label in zip(row["source"], row["source_labels"]):
                if sentence.strip():
                    writer.writerow([sentence.strip(), label])
    out = work / "extractive"
    wall = run(["kerasllm", "train", "lstm-classifier", "--data", sentences, "--out", out, "--quiet", "--epochs", "10",
                "--set", "data.sequence_length=64", "--set", "classification.class_weight=balanced", "--set", "train.monitor=val_loss",
                "--set", f"train.max_seconds={args.minutes * 60:g}"])
    loaded_run, model = load(out)
    picks = []
    for row in test:
        candidates = [s.strip() for s in row["source"] if s.strip()]
        probabilities = loaded_run.task.probabilities(model, loaded_run, candidates)
        picks.append(candidates[int(probabilities[:, loaded_run.artifacts["labels"].class_names.index("1")].argmax())])
    results["(c) extractive: lstm-classifier on source_labels picks one sentence"] = (text_scores(picks, references, rouge=True), wall)

    for label, (scores, seconds) in results.items():
        print(f"{label}: ROUGE-1 {scores['rouge1']:.2f} ROUGE-2 {scores['rouge2']:.2f} ROUGE-L {scores['rougeL']:.2f}", flush=True)
        append_row(
            "SciTLDR-A test (618 papers, ROUGE F best over references, rouge-score stemmed), 2 CPU cores",
            ["date", "system", "ROUGE-1", "ROUGE-2", "ROUGE-L", "training wall", "machine", "command"],
            [dt.date.today().isoformat(), label, f"**{scores['rouge1']:.2f}**", f"{scores['rouge2']:.2f}", f"{scores['rougeL']:.2f}",
             f"{seconds:.0f} s" if seconds else "–", machine(), f"`python bench/seq2seq.py scitldr --minutes {args.minutes:g}`"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", choices=["multi30k", "scitldr"])
    parser.add_argument("--data-dir", default=str(HERE.parent.parent / "shared/data"))
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0)
    parser.add_argument("--models", default="transformer,lstm")
    parser.add_argument("--run-dir", default="", help="multi30k: evaluate this finished run (one model) instead of training")
    parser.add_argument("--wall", type=float, default=0.0, help="with --run-dir: the training wall time to record")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    (multi30k if args.benchmark == "multi30k" else scitldr)(args)


if __name__ == "__main__":
    sys.exit(main())
