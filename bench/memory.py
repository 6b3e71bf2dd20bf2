"""Where a training run's memory goes: peak RSS of `train transformer-lm --preset P` for a few steps, phase by phase,
against what the run needs (weights + gradients + two Adam moments + activations, `kerasllm.train.memory.step_bytes`) on top
of the runtime's baseline (RSS once TensorFlow and Keras are imported).

    python bench/memory.py [--presets tiny small] [--data ../shared/data/tinyshakespeare/input.txt] [--steps 5] [--set KEY=VALUE]
    python bench/memory.py --presets base --set train.batch_size=2   # GPT-2 small's shape: a batch that fits in RAM

Each preset (and each variant: XLA on with an empty compilation cache, XLA on again with the programs the first run
compiled in the cache, XLA off) runs in its own process, through kerasllm's Trainer, phase by phase
(the imports, prepare: data and tokenizer, build: model and compile, loop: the steps with their XLA compilation and
one validation, finalize); the process's peak RSS (`ru_maxrss`) is read after each phase.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from common import machine  # noqa: E402

CHILD = r'''
import json, resource, sys, time
from pathlib import Path

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

preset, data, steps, jit, out, more = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", Path(sys.argv[5]), sys.argv[6:]
marks = {"start": peak()}
from kerasllm import catalog, compilation, distribute
from kerasllm.train import memory
from kerasllm.core import quiet
from kerasllm.core import config as config_lib
compilation.set_xla_defaults(quiet.keras_backend())  # as the command line does: XLA CPU flags, the compilation cache
quiet.load_tensorflow()
from kerasllm.train import trainer as training
marks["imports (TensorFlow, Keras)"] = peak()
spec = catalog.model("transformer-lm")
sets = [f"data.source={data}", "train.epochs=1", f"train.steps_per_epoch={steps}", f"runtime.jit_compile={str(jit).lower()}",
        "runtime.steps_per_execution=1", "train.sample_length=0", "train.validation_steps=2", *more]
config = config_lib.resolve(spec, None, sets, preset=preset)
trainer = training.Trainer(config, out, training.RunOptions(progress="quiet"))
started = time.time()
prepared = trainer.prepare(distribute.get_strategy("auto"))
marks["prepare (data, tokenizer)"] = peak()
built = trainer.build(prepared)
marks["build (model, compile)"] = peak()
looped = trainer.loop(prepared, built)
marks["loop (XLA compilation, steps, validation)" if jit else "loop (steps, validation)"] = peak()
trainer.finalize(prepared, built, looped)
marks["finalize (model.keras, card)"] = peak()
fixed, per_example = memory.step_bytes(built.model, config.data.sequence_length, training=True)
print(json.dumps({"marks": marks, "parameters": int(built.model.count_params()), "batch": config.train.batch_size,
                  "length": config.data.sequence_length, "fixed_mb": fixed / 2**20,
                  "activations_mb": per_example * config.train.batch_size / 2**20, "seconds": time.time() - started}))
'''


def measure(preset: str, data: str, steps: int, jit: bool, sets: list[str], cache: Path) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run([sys.executable, "-c", CHILD, preset, data, str(steps), "1" if jit else "0", str(Path(folder) / "run"),
                               *sets],
                              capture_output=True, text=True, cwd=ROOT,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERASLLM_CACHE_DIR=str(cache)))
    if done.returncode != 0:
        raise SystemExit(f"{preset}: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="more settings for every run (KEY=VALUE)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    cache = Path(tempfile.mkdtemp())  # an empty compilation cache: the first XLA run compiles, the second loads
    for preset in args.presets:
        for jit, label in ((True, "XLA on"), (True, "XLA on, compilation cache warm"), (False, "XLA off")):
            found = measure(preset, args.data, args.steps, jit, args.sets, cache)
            marks = found["marks"]
            baseline = marks["imports (TensorFlow, Keras)"]
            need = baseline + found["fixed_mb"] + found["activations_mb"]
            top = max(marks.values())
            print(f"\n{preset} ({label}): {found['parameters']:,} parameters, batch {found['batch']} × "
                  f"{found['length']} tokens, {found['seconds']:.0f} s")
            previous = 0.0
            for phase, value in marks.items():
                print(f"  {phase:<45} peak {value:8.0f} MB  (+{value - previous:6.0f})")
                previous = value
            print(f"  needed: baseline {baseline:.0f} + weights, gradients, Adam moments {found['fixed_mb']:.0f} + activations and "
                  f"their gradients {found['activations_mb']:.0f} = {need:.0f} MB; peak {top:.0f} MB = {top / need:.2f}× that")


if __name__ == "__main__":
    main()
