"""Every zoo model takes `kerasllm compress --method int8` (slow tier): a tiny run of each, its int8 copy loads, its
task metric is measured before and after, and `evaluate` on the copy gives the copy's figure."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kerasllm import catalog, compression
from tests.zoo_cases import cli_args, write_cases

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def zoo_settings(tmp_path_factory):
    return write_cases(tmp_path_factory.mktemp("zoo") / "data")


def kerasllm(*args):
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], capture_output=True, text=True, cwd=str(ROOT), timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("name", catalog.names())
def test_every_zoo_model_compresses_to_int8(zoo_settings, tmp_path, name):
    run, copy = tmp_path / "run", tmp_path / "int8"
    trained = kerasllm(*cli_args(name, zoo_settings[name], run))
    assert trained.returncode == 0, trained.stderr[-3000:]
    compressed = kerasllm("compress", run, "--method", "int8", "--out", copy, "--json")
    assert compressed.returncode == 0, compressed.stderr[-3000:]
    summary = json.loads(compressed.stdout)
    after = summary["after"]
    assert summary["compression"]["quantized_layers"] > 0 and after["quantized_parameters"] > 0
    measured = {key for _, key, _ in compression.ROWS}  # size, parameters, latency, speed: the rest is the task's quality
    keys = [key for key in summary["before"] if key not in measured]
    assert keys, "the task's quality metrics are measured"
    evaluated = kerasllm("evaluate", copy, "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    results = json.loads(evaluated.stdout)
    for key in keys:
        assert results[key] == pytest.approx(after[key], rel=1e-3, abs=1e-3), key
    print(json.dumps({name: {"quantized_layers": summary["compression"]["quantized_layers"],
                             "kept_in_float": summary["compression"]["kept_in_float"],
                             "size": [summary["before"]["size_bytes"], after["size_bytes"]],
                             **{key: [summary["before"][key], after[key]] for key in keys}}}))
