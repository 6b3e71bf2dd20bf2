"""Benchmark: lstm-textgen generation, the stateful (h, c) decoder against the windowed fallback.

    python bench/generation_lstm.py [--run RUN] [--length 500]

Without `--run` it first trains the main job (`kerasllm train lstm-textgen`, offline) into a
temporary folder. Both decoders generate `--length` characters greedily from the same prompt
in one process; the script prints characters per second for each, their ratio, how many
leading characters agree (the windowed path sees only the last `data.sequence_length`
tokens, so the two may part after that), and appends a row to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import append_row, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained lstm-textgen run folder")
    parser.add_argument("--length", type=int, default=500)
    parser.add_argument("--prompt", default="The ")
    args = parser.parse_args()
    run_dir = args.run
    if run_dir is None:
        run_dir = Path(tempfile.mkdtemp()) / "run"
        print(f"training the main job into {run_dir} ...", flush=True)
        subprocess.run(["kerasllm", "train", "lstm-textgen", "--out", str(run_dir), "--quiet"], check=True)

    from kerasllm.core.quiet import load_tensorflow

    load_tensorflow()
    from kerasllm import generation, runs
    from kerasllm.export.saving import load_model

    run = runs.load_run(run_dir)
    model = load_model(run.model_path)
    tokenizer, window = run.artifacts["tokenizer"], run.config.data.sequence_length
    decoders = {
        "stateful": run.spec.decoder(model),
        "windowed": generation.WindowedDecoder(model, window, run.spec.output),
    }
    texts, speed = {}, {}
    for name, decoder in decoders.items():
        generation.generate(model, tokenizer, [args.prompt], 5, temperature=0, decoder=decoder)  # trace / warm up
        started = time.perf_counter()
        texts[name] = generation.generate(model, tokenizer, [args.prompt], args.length, temperature=0, decoder=decoder)[0]
        speed[name] = len(texts[name]) / (time.perf_counter() - started)
        print(f"{name:9s} {speed[name]:10,.0f} chars/s")
    agree = next((i for i, (a, b) in enumerate(zip(texts["stateful"], texts["windowed"])) if a != b), len(texts["stateful"]))
    ratio = speed["stateful"] / speed["windowed"]
    print(f"ratio {ratio:.1f}x; the first {agree} of {args.length} characters are identical (window {window})")
    print(args.prompt + texts["stateful"][:200])
    append_row(
        "lstm-textgen generation: stateful against windowed",
        ["date", "command", "new chars", "stateful chars/s", "windowed chars/s", "ratio", "identical leading chars", "machine"],
        [dt.date.today().isoformat(), f"`python bench/generation_lstm.py{' --run RUN' if args.run else ''} --length {args.length}`",
         str(args.length), f"{speed['stateful']:,.0f}", f"{speed['windowed']:,.0f}", f"**{ratio:.1f}×**",
         f"{agree} (window {window})", machine()],
    )


if __name__ == "__main__":
    sys.exit(main())
