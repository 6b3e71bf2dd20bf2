"""The persistent XLA compilation cache: a second identical run, and a resume, load their compiled programs instead of
compiling them again (each run is a process of its own: TensorFlow reads its XLA flags when it loads)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import TINY_LM


def programs(folder):
    return sorted(path.name for path in folder.rglob("*") if path.is_file())


def train(*args, cache):
    env = {name: value for name, value in os.environ.items() if name not in ("XLA_FLAGS", "TF_XLA_FLAGS")}  # a user's shell
    env["KERASLLM_CACHE_DIR"] = str(cache)
    return subprocess.run([sys.executable, "-m", "kerasllm", "train", *args], capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_a_second_identical_run_and_a_resume_compile_nothing_again(corpus_file, tmp_path):
    cache = tmp_path / "cache"
    settings = [arg if arg != "runtime.jit_compile=false" else "runtime.jit_compile=true" for arg in TINY_LM]
    first = train("transformer-lm", "--data", str(corpus_file), "--out", str(tmp_path / "one"), "--quiet", *settings, cache=cache)
    assert first.returncode == 0, first.stderr
    compiled = programs(cache)
    assert compiled, "the first run wrote no compiled program"
    again = train("transformer-lm", "--data", str(corpus_file), "--out", str(tmp_path / "two"), "--quiet", *settings, cache=cache)
    assert again.returncode == 0 and again.stderr == "", again.stderr  # loading a cached program prints nothing
    assert programs(cache) == compiled  # nothing compiled again
    timings = [json.loads((tmp_path / run / "metrics.json").read_text())["timings"] for run in ("one", "two")]
    assert timings[1]["train step compilation"] < timings[0]["train step compilation"]
    # a resume too: TensorFlow keys a cached program by its traced function's name, whose number counts what the
    # process made before it (compat.align_trace_names)
    ended = json.loads((tmp_path / "one" / "metrics.json").read_text())["after_training"]["loss"]
    resumed = train("--resume", str(tmp_path / "one"), "--epochs", "2", "--quiet", cache=cache)
    assert resumed.returncode == 0 and resumed.stderr == "", resumed.stderr
    assert programs(cache) == compiled
    # the restored checkpoint (the first run's only epoch, its final weights) evaluated as the resume starts
    assert json.loads((tmp_path / "one" / "metrics.json").read_text())["at_resume"]["loss"] == pytest.approx(ended, rel=1e-5)


@pytest.mark.slow
@pytest.mark.heavy  # the heavy tier (.ci/heavy): a third run of the same model
def test_the_cache_can_be_turned_off(corpus_file, tmp_path, monkeypatch):
    monkeypatch.setenv("KERASLLM_COMPILATION_CACHE", "0")
    settings = [arg if arg != "runtime.jit_compile=false" else "runtime.jit_compile=true" for arg in TINY_LM]
    result = train("transformer-lm", "--data", str(corpus_file), "--out", str(tmp_path / "one"), "--quiet", *settings,
                   cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "cache").exists()
