"""Benchmark: speculative decoding (#34) — a transformer-lm `small` run alone against the same run with a `tiny`
student distilled from it proposing K tokens per pass, greedy, batch 1, side by side in one process.

    python bench/speculative.py [--target RUN --draft RUN] [--tokens 200] [--repeats 3]

Without --target/--draft it trains them on tinyshakespeare (`../shared/data/tinyshakespeare`): `kerasllm train
transformer-lm --preset small` for 2 × 120 steps, then `kerasllm compress TARGET --method distill --student tiny
--set model_args.max_sequence_length=256 --epochs 2` (the student reads the teacher's 256-token windows). Each
measurement generates `--tokens` new tokens after a 16-token prompt from the validation split, after one untimed
warm-up of each (compilation), and takes the median of `--repeats`; the rows give tokens/s for the run alone and for
K = 2, 4, 8, the ratio to the run alone, the share of proposals kept, the tokens per pass of the run, and whether the
text is the run's own (it must be).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, append_row, kerasllm, machine

DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare"


def train(folder: Path) -> tuple[Path, Path]:
    target, draft = folder / "target", folder / "draft"
    kerasllm("train", "transformer-lm", "--preset", "small", "--data", DATA, "--out", target, "--epochs", "2", "--quiet",
             "--set", "train.steps_per_epoch=120")
    kerasllm("compress", target, "--method", "distill", "--student", "tiny", "--set", "model_args.max_sequence_length=256",
             "--epochs", "2", "--out", draft)  # the student reads the teacher's 256-token windows
    return target, draft


def measure(target_dir: Path, draft_dir: Path, tokens: int, repeats: int) -> None:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from kerasllm.commands.common import load_tensorflow

    load_tensorflow()
    from kerasllm import generation, runs, speculative
    from kerasllm.data.text import reload_validation
    from kerasllm.export.saving import load_model

    run, draft = runs.load_run(target_dir), runs.load_run(draft_dir)
    model, draft_model = load_model(target_dir / "model.keras"), load_model(draft_dir / "model.keras")
    tokenizer = run.artifacts["tokenizer"]
    prompt = [int(i) for i in tokenizer.encode(reload_validation(run.data_record)[:200])][:16]
    greedy = generation.Sampling(temperature=0.0)

    def alone():
        (text,) = generation.generate_ids(model, tokenizer, [np.asarray(prompt, np.int32)], tokens, spec=run.spec,
                                          window=run.config.data.sequence_length, temperature=0.0)
        return text, None

    def drafted(k):
        target, proposer = speculative.decoders(model, draft_model, run.spec, draft.spec)
        ids, counts = speculative.generate(target, proposer, tokenizer, prompt, tokens, greedy, k)
        return tokenizer.decode(ids), counts

    def timed(call):
        call()  # warm-up: traces and compiles
        seconds, found = [], None
        for _ in range(repeats):
            started = time.perf_counter()
            found = call()
            seconds.append(time.perf_counter() - started)
        return tokens / statistics.median(seconds), found

    base_speed, (base_text, _) = timed(alone)
    rows = [("the run alone", base_speed, base_text, None)]
    for k in (2, 4, 8):
        speed, (text, counts) = timed(lambda k=k: drafted(k))
        rows.append((f"K = {k}", speed, text, counts))
    for name, speed, text, counts in rows:
        kept = "" if counts is None else f"{counts.accepted / counts.proposed:.0%}"
        per_pass = "" if counts is None else f"{(counts.accepted + counts.passes) / counts.passes:.2f}"
        row = [dt.date.today().isoformat(), f"transformer-lm `small` ({run.config.model_args.max_sequence_length} context), "
               f"draft `tiny` distilled from it", name, f"{speed:,.1f}", f"{speed / base_speed:.2f}×", kept, per_pass,
               "yes" if text == base_text else "**no**", machine()]
        append_row("Speculative decoding, greedy, batch 1 (`python bench/speculative.py`, #34)",
                   ["date", "run and draft", "decoding", "tokens/s", "vs the run alone", "proposals kept", "tokens per pass",
                    "the run's own text", "machine"], row)
        print(" | ".join(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path)
    parser.add_argument("--draft", type=Path)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if (args.target is None) != (args.draft is None):
        sys.exit("pass both --target and --draft, or neither")
    if args.target is not None:
        return measure(args.target, args.draft, args.tokens, args.repeats)
    if not DATA.is_dir():
        sys.exit(f"bench/speculative.py needs {DATA} (tinyshakespeare); it is not there")
    with tempfile.TemporaryDirectory() as folder:
        measure(*train(Path(folder)), args.tokens, args.repeats)
    return None


if __name__ == "__main__":
    main()
