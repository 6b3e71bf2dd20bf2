"""Train every registered model for one step in a fresh process and print what happened, as JSON.

    python -m tests.zoo_step FOLDER tensorflow [MODEL,...]  # one device, then MirroredStrategy over 2 logical CPUs
    python -m tests.zoo_step FOLDER jax [MODEL,...]         # one device, then DataParallel over 2 host devices

The environment is set here, before TensorFlow or JAX starts: logical devices and the host device count
cannot change afterwards. For each model it prints the replicas, the global batch, whether XLA compiled the
step, the first step's training loss and the validation loss after it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

folder, mode = Path(sys.argv[1]), sys.argv[2]
only = sys.argv[3].split(",") if len(sys.argv) > 3 else None
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
if mode == "jax":
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
else:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from typer.testing import CliRunner  # noqa: E402

from kerasllm import cli  # noqa: E402
from kerasllm.core import files  # noqa: E402
from tests.zoo_cases import cli_args, write_cases  # noqa: E402

# (strategy, per-replica batch, XLA): the same global batch of 8 on one device and over two. On TensorFlow the
# one-device run is Keras fit compiled whole by XLA (what a TPU compiles), the mirrored one Keras fit over 2 logical
# CPUs (XLA there is the custom loop's, tested in test_training); JAX always compiles.
RUNS = [("cpu", 8, True), ("mirrored", 4, mode == "jax")]
runner = CliRunner()
results = {}
for name, settings in write_cases(folder / "data").items():
    if only and name not in only:
        continue
    for strategy, batch, jit in RUNS:
        run_dir = folder / f"{name}-{strategy}"
        args = cli_args(name, [*settings, f"train.batch_size={batch}", f"runtime.strategy={strategy}", f"runtime.jit_compile={jit}"],
                        run_dir)
        result = runner.invoke(cli.app, args)
        if result.exit_code != 0:
            results.setdefault(name, {})[strategy] = {"error": (result.output + repr(result.exception))[-1500:]}
            continue
        summary = files.read_json(run_dir / files.METRICS_FILE)
        history = files.read_json(run_dir / files.HISTORY_FILE)
        results.setdefault(name, {})[strategy] = {
            "replicas": summary["replicas"], "global_batch": summary["global_batch"], "strategy": summary["strategy"],
            "jit_compile": summary["jit_compile"], "loop": summary["loop"], "backend": summary["backend"], "steps": summary["steps"],
            "first_loss": history["loss"][0], "after": summary["after_training"]["loss"]}
        print(name, strategy, results[name][strategy], file=sys.stderr, flush=True)
print(json.dumps(results))
