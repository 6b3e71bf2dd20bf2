"""One worker of a two-worker job on 127.0.0.1, for tests/train/test_distribute.py.

    python -m tests.mw_worker INDEX PORT0,PORT1 RUN_DIR MODEL DATA_FOLDER [EPOCHS] [resume|die]

INDEX -1 is a single process (no TF_CONFIG) at the same global batch. The final weights go to
RUN_DIR.weights-INDEX.npz (beside the run folder, which only the chief writes); the summary is printed as JSON.
`die` exits this worker once its model is built, as a crash would.
"""

from __future__ import annotations

import json
import os
import sys

index, ports, run_dir, model_name, folder = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3], sys.argv[4], sys.argv[5]
epochs = int(sys.argv[6]) if len(sys.argv) > 6 else 1
action = sys.argv[7] if len(sys.argv) > 7 else ""
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
if index >= 0:
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                                          "task": {"type": "worker", "index": index}})

import numpy as np  # noqa: E402

from kerasllm import catalog  # noqa: E402
from kerasllm.core import config as config_lib  # noqa: E402
from kerasllm.train import trainer as training  # noqa: E402
from tests.zoo_cases import cases  # noqa: E402

settings = cases(folder)[model_name]  # the test wrote the data
per_replica = 4 if index >= 0 else 8  # the same global batch of 8
config = config_lib.resolve(catalog.model(model_name), None, [
    *settings, f"train.batch_size={per_replica}", "train.steps_per_epoch=3", f"train.epochs={epochs}", "train.warmup_steps=1",
    "train.validation_steps=0", "runtime.worker_timeout=20", "runtime.jit_compile=false"])
built = {}


def on_built(model):
    built["model"] = model
    if action == "die":
        os._exit(3)


summary = training.train(config, run_dir, resume=action == "resume", progress="quiet", on_built=on_built)
np.savez(f"{run_dir}.weights-{index}.npz", *[np.asarray(w) for w in built["model"].get_weights()])
print(json.dumps({key: summary[key] for key in ("strategy", "replicas", "global_batch", "loop", "steps")}
                 | {"loss": summary["after_training"]["loss"]}))
