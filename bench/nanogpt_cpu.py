"""Benchmark: transformer-lm against PyTorch nanoGPT, nanoGPT's CPU config, side by side on this machine.

    python bench/nanogpt_cpu.py [--data ../shared/data/tinyshakespeare/input.txt] [--torch-python PYTHON] [--iters 2000]
                                [--profile] [--again] [--recipe bench/tinyshakespeare_fast.yaml] [--torch-iters N]
                                [--target 1.88]

1. `kerasllm train transformer-lm --preset tiny --data DATA --config bench/nanogpt_cpu.yaml`
   (the recipe lives in that config file, so the CLI reproduces it), with an empty compilation cache
   (`KERASLLM_CACHE_DIR` points at a new folder);
2. with `--again`: the same command once more (the cache now holds its programs), and `--resume` of the first run
   with one more epoch: their compilation is what a second run and a resume pay;
3. `bench/nanogpt_torch.py` with a Python that has PyTorch (`--torch-python`, default: this one), if it can import
   torch;
4. with `--recipe`: kerasllm with that recipe (its own empty cache) against nanoGPT's recipe run for
   `--torch-iters` iterations (its schedule stretched to them; nanoGPT's 2,000 may end above the target), each
   until the end of its schedule: the seconds and tokens until a validation reached `--target` (validation every
   250 iterations for nanoGPT, every epoch for kerasllm; the first one at or under the target counts).

Prints validation loss at 250/500/1000/2000 iterations, ms per iteration (whole-loop mean: compilation and validation
included; and the median of steady steps), tokens/s, peak RSS and process wall time for both, with the ratios; with
`--profile`, where each process's wall time went (kerasllm's metrics.json `timings`; nanoGPT's from its own clock)
and the whole-loop overhead (the loop's time beyond its steps, over its steps). Appends every table to
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import append_row, machine

HERE = Path(__file__).resolve().parent
CHECKPOINTS = (250, 500, 1000, 2000)
# where kerasllm's seconds go, in the order a run spends them (metrics.json `timings`)
BEFORE_LOOP = ("start-up", "data", "build", "evaluation before training", "evaluation at resume")
LOOP = ("train step compilation", "train steps", "validation compilation", "validation", "checkpoints", "tensorboard",
        "training loop, other")
AFTER_LOOP = ("best weights", "final evaluation", "model file", "card and curves")


def timed(command: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) of this child alone (`os.wait4`), and stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status):
            sys.exit(f"{' '.join(command)} failed:\n{err.read()[-3000:]}")
        return wall, usage.ru_maxrss / 1024, out.read()


def kerasllm_run(label: str, command: list[str], run_dir: Path, cache: Path) -> dict:
    print("running:", " ".join(command), flush=True)
    wall, rss, _ = timed(command, env=dict(os.environ, KERASLLM_CACHE_DIR=str(cache)))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    timings = metrics["timings"]
    before = sum(timings.get(name, 0.0) for name in BEFORE_LOOP)
    steps_per_validation = metrics["steps"] // len(history["val_loss"]) if history["val_loss"] else 0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    tokens_per_step = metrics["global_batch"] * config["data"]["sequence_length"]
    evals = [{"iter": steps_per_validation * (i + 1), "val_loss": loss, "loop_seconds": seconds, "process_seconds": before + seconds,
              "tokens": round(tokens_per_step * steps_per_validation * (i + 1))}
             for i, (loss, seconds) in enumerate(zip(history["val_loss"], history["train_seconds"]))]
    return {"framework": label, "wall": wall, "rss": rss, "val": {e["iter"]: e["val_loss"] for e in evals},
            "mean_ms": 1000 * metrics["train_seconds"] / metrics["steps"],
            "median_ms": 1000 * (metrics.get("median_step_seconds") or float("nan")),
            "tokens_per_second": metrics["tokens_per_second"], "full_val": metrics["after_training"]["loss"],
            "timings": timings, "evals": evals, "parameters": metrics["parameters"]}


def torch_run(python: str, data: str, iters: int) -> dict | None:
    if subprocess.run([python, "-c", "import torch"], capture_output=True).returncode:
        print(f"{python} cannot import torch: the PyTorch reference is skipped")
        return None
    command = [python, str(HERE / "nanogpt_torch.py"), "--data", data, "--iters", str(iters)]
    print("running:", " ".join(command), flush=True)
    wall, _, out = timed(command)
    ref = json.loads(out.strip().splitlines()[-1])
    return {"framework": ref["framework"] + ", nanoGPT reference", "wall": wall, "rss": ref["peak_rss_mb"],
            "val": {int(k): v for k, v in ref["val_loss"].items()}, "mean_ms": ref["ms_per_iter_mean"],
            "median_ms": ref["ms_per_iter_median"], "tokens_per_second": ref["tokens_per_second"], "full_val": None,
            "timings": ref["timings"], "evals": ref["evals"], "parameters": ref.get("parameters")}


def overhead(row: dict) -> float:
    """The training loop's time beyond its steps, as a share of its steps."""
    timings = row["timings"]
    return sum(timings.get(name, 0.0) for name in LOOP if name != "train steps") / timings["train steps"]


def first_at(row: dict, target: float) -> dict | None:
    return next((e for e in row["evals"] if e["val_loss"] <= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared/data/tinyshakespeare/input.txt"))
    parser.add_argument("--torch-python", default=sys.executable)
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--profile", action="store_true", help="where each process's wall time went")
    parser.add_argument("--again", action="store_true", help="a second identical run and a resume, on the warm cache")
    parser.add_argument("--recipe", help="a kerasllm config to race to --target against nanoGPT's recipe")
    parser.add_argument("--torch-iters", type=int, default=3000, help="nanoGPT's iterations in the race to --target")
    parser.add_argument("--target", type=float, default=1.88)
    args = parser.parse_args()
    if not Path(args.data).is_file():
        sys.exit(f"{args.data} not found; pass --data with tinyshakespeare's input.txt")
    scratch = Path(tempfile.mkdtemp())
    command_line = "python bench/nanogpt_cpu.py " + " ".join(sys.argv[1:])
    base = ["kerasllm", "train", "transformer-lm", "--preset", "tiny", "--data", args.data, "--quiet"]
    nanogpt = [*base, "--config", str(HERE / "nanogpt_cpu.yaml"), "--set", f"train.epochs={args.iters // 250}"]

    rows = [kerasllm_run("kerasllm (Keras 3 / TF, XLA)", [*nanogpt, "--out", str(scratch / "run")], scratch / "run", scratch / "cache")]
    if args.again:
        programs = [len(list((scratch / "cache").rglob("*.pb")))]
        rows.append(kerasllm_run("kerasllm, the same run again (compilation cache warm)", [*nanogpt, "--out", str(scratch / "again")],
                                 scratch / "again", scratch / "cache"))
        programs.append(len(list((scratch / "cache").rglob("*.pb"))))
        resume = ["kerasllm", "train", "--resume", str(scratch / "run"), "--epochs", str(args.iters // 250 + 1), "--quiet"]
        print("running:", " ".join(resume), flush=True)
        timed(resume, env=dict(os.environ, KERASLLM_CACHE_DIR=str(scratch / "cache")))
        programs.append(len(list((scratch / "cache").rglob("*.pb"))))
        resumed = json.loads((scratch / "run" / "metrics.json").read_text())["timings"]
        verdict = "nothing compiled again" if len(set(programs)) == 1 else "new programs were compiled"
        print(f"compiled programs in the cache after the first run, the second and the resume: {programs} ({verdict}); the "
              f"resume's first train call took {resumed.get('train step compilation', 0):.2f} s beyond a steady one (tracing, loading)")
        rows.append({"framework": "kerasllm, --resume for one more epoch (cache warm)", "timings": resumed, "resume": True})
    reference = torch_run(args.torch_python, args.data, args.iters)
    if reference:
        rows.append(reference)

    speed_table(rows, args.iters, command_line)
    if args.profile:
        profile_table(rows, command_line)
    if args.recipe:
        race(args, base, scratch, command_line)


def speed_table(rows: list[dict], iters: int, command_line: str) -> None:
    header = ["date", "framework", *[f"val@{c}" for c in CHECKPOINTS if c <= iters], "ms/iter mean", "ms/iter median",
              "tokens/s", "peak RSS", "wall", "machine", "command"]
    for row in rows:
        if row.get("resume"):
            continue
        ratio = f" ({row['mean_ms'] / rows[0]['mean_ms']:.2f}× kerasllm)" if row is not rows[0] else ""
        values = [f"{row['val'].get(c, float('nan')):.4f}" for c in CHECKPOINTS if c <= iters]
        print(f"{row['framework']:45s} val {' '.join(values)}  {row['mean_ms']:.1f} ms/iter mean{ratio}, "
              f"{row['median_ms']:.1f} median, {row['tokens_per_second']:,.0f} tok/s, {row['rss']:.0f} MB, {row['wall']:.0f} s wall")
        append_row("transformer-lm against nanoGPT, CPU config (4L/4H/128, block 64, batch 12)", header, [
            dt.date.today().isoformat(), row["framework"], *values, f"{row['mean_ms']:.1f}{ratio}", f"{row['median_ms']:.1f}",
            f"{row['tokens_per_second']:,.0f}", f"{row['rss']:.0f} MB", f"{row['wall']:.0f} s", machine(), f"`{command_line}`"])
    print(f"kerasllm validation loss on the whole split after training: {rows[0]['full_val']:.4f}")


def profile_table(rows: list[dict], command_line: str) -> None:
    names = [*BEFORE_LOOP, *LOOP, *AFTER_LOOP]
    header = ["date", "run", *names, "loop overhead", "machine", "command"]
    for row in rows:
        timings = row["timings"]
        cells = [f"{timings[name]:.2f}" if name in timings else "–" for name in names]
        share = f"{100 * overhead(row):.1f} %" if timings.get("train steps") else "–"
        print(f"{row['framework']}: " + ", ".join(f"{name} {cell}" for name, cell in zip(names, cells) if cell != "–")
              + f"; loop overhead {share}")
        append_row("Where the wall time goes: transformer-lm (kerasllm) and nanoGPT, nanoGPT's CPU config, seconds",
                   header, [dt.date.today().isoformat(), row["framework"], *cells, share, machine(), f"`{command_line}`"])


def race(args, base: list[str], scratch: Path, command_line: str) -> None:
    """kerasllm's recipe against nanoGPT's, each to the end of its schedule: when did validation first reach the target?"""
    fast = kerasllm_run(f"kerasllm, {Path(args.recipe).name}",
                        [*base, "--config", str(Path(args.recipe).resolve()), "--out", str(scratch / "fast")],
                        scratch / "fast", scratch / "fast-cache")
    rows = [fast]
    reference = torch_run(args.torch_python, args.data, args.torch_iters)
    if reference:
        reference["framework"] = reference["framework"].replace("nanoGPT reference", f"nanoGPT's recipe, {args.torch_iters} iterations")
        rows.append(reference)
    header = ["date", "run", "parameters", f"iterations to val ≤ {args.target}", "tokens", "loop seconds", "process seconds",
              "val there", "final val", "machine", "command"]
    hits = [first_at(row, args.target) for row in rows]
    for row, hit in zip(rows, hits):
        last = row["evals"][-1]
        cells = ([f"{hit['iter']:,}", f"{hit['tokens']:,}", f"{hit['loop_seconds']:.1f}", f"{hit['process_seconds']:.1f}",
                  f"{hit['val_loss']:.4f}"] if hit else
                 [f"not in {last['iter']:,}", f"> {last['tokens']:,}", f"> {last['loop_seconds']:.1f}", f"> {last['process_seconds']:.1f}", "–"])
        print(f"{row['framework']}: to val ≤ {args.target}: " + " / ".join(cells) + f"; final {last['val_loss']:.4f}")
        append_row(f"Time to validation loss ≤ {args.target}: kerasllm's recipe against nanoGPT's (tinyshakespeare, characters)",
                   header, [dt.date.today().isoformat(), row["framework"], f"{row['parameters']:,}" if row.get("parameters") else "–",
                            *cells, f"{last['val_loss']:.4f}", machine(), f"`{command_line}`"])
    if len(hits) == 2 and all(hits):
        ours, theirs = hits
        print(f"kerasllm reached it {theirs['loop_seconds'] / ours['loop_seconds']:.2f}× sooner in loop seconds, "
              f"{theirs['process_seconds'] / ours['process_seconds']:.2f}× in process seconds, with "
              f"{theirs['tokens'] / ours['tokens']:.2f}× fewer tokens")


if __name__ == "__main__":
    main()
