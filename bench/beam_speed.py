"""Benchmark: seq2seq decoding speed, side by side on one trained run: greedy (batched), beam search one source at a
time (the earlier path), and beam search over a batch of sources (`beam_search_batch`).

    python bench/beam_speed.py RUN [--data-dir ../shared/data] [--sentences 200] [--beam 4]

Decodes (after a warm-up on the first 16) the first N sources of Multi30k's test_2016_flickr with each method, prints sentences/s, the ratios, and
how many beam outputs agree between the two beam paths (they should all agree), and appends them to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import sys
import time
from pathlib import Path

from common import append_row, machine

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data-dir", default=str(HERE.parent.parent / "shared/data"))
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--beam", type=int, default=4)
    options = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    import numpy as np

    from kerasllm import runs
    from kerasllm.core.quiet import load_tensorflow
    from kerasllm.export.saving import load_model
    from kerasllm.generation import beam_search
    from kerasllm.tasks.seq2seq import pack_sources
    from kerasllm.tasks.seq2seq_decoding import decode, seq2seq_decoder

    load_tensorflow()
    run = runs.load_run(options.run)
    model = load_model(options.run / "model.keras")
    with gzip.open(Path(options.data_dir) / "multi30k" / "test_2016_flickr.en.gz", "rt", encoding="utf-8") as file:
        texts = [line.strip() for line in file][: options.sentences]
    source_tokenizer, target_tokenizer = run.task.tokenizers(run.artifacts)
    source_length, target_length = run.task.lengths(run.config)
    rows, _ = pack_sources(source_tokenizer, texts, source_length)
    decoder = seq2seq_decoder(model, run.spec, target_length)
    bos, eos = target_tokenizer.special_id("bos"), target_tokenizer.eos_id
    banned = [i for i in target_tokenizer.never_generated() if i != eos]

    def one_at_a_time(rows):
        return [list(beam_search(decoder.bind(row[None]), np.asarray([bos]), target_length, options.beam, banned=banned, eos=eos))
                for row in rows]

    methods = {"greedy, batched": lambda rows: decode(decoder, rows, target_tokenizer, target_length),
               f"beam {options.beam}, one source at a time": one_at_a_time,
               f"beam {options.beam}, batched": lambda rows: decode(decoder, rows, target_tokenizer, target_length, beam=options.beam)}
    speeds, outputs = {}, {}
    for name, method in methods.items():
        method(rows[: 64 // options.beam])  # warm-up: every traced shape the timed run meets
        started = time.perf_counter()
        outputs[name] = method(rows)
        speeds[name] = len(rows) / (time.perf_counter() - started)
        print(f"{name}: {speeds[name]:.1f} sentences/s", flush=True)
    single, batched = list(outputs.values())[1:]
    agree = sum(a == b for a, b in zip(single, batched))
    print(f"beam outputs identical: {agree} of {len(rows)}")
    base = speeds[f"beam {options.beam}, one source at a time"]
    command = "python bench/beam_speed.py " + " ".join(sys.argv[1:])
    for name, speed in speeds.items():
        append_row("Seq2seq decoding speed: batched beam search (#9)",
                   ["date", "model", "method", "sentences/s", "vs beam one at a time", "beam outputs identical", "machine", "command"],
                   [dt.date.today().isoformat(), run.spec.name, name, f"{speed:.1f}", f"{speed / base:.1f}×",
                    f"{agree}/{len(rows)}" if "batched" in name and name.startswith("beam") else "", machine(), f"`{command}`"])


if __name__ == "__main__":
    main()
