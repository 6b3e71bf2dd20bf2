"""Tiny shared fixtures: a small corpus, tiny-model settings and one trained run."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# compiled XLA programs (kerasllm's persistent compilation cache) go to a folder of this session, not the user's cache
os.environ.setdefault("KERASLLM_CACHE_DIR", tempfile.mkdtemp(prefix="kerasllm-test-cache-"))
# cli.py's consoles read COLUMNS once, when they are made: a width inherited here (pytest-xdist's workers have one)
# would hold them at it, instead of the width each test's CliRunner sets
os.environ.pop("COLUMNS", None)

import pytest
from typer.testing import CliRunner

from kerasllm import cli
from kerasllm.data.text import builtin_text

# Three tiers: the fast one (the default), `-m "slow and not heavy"` (.ci/run: every wing once, one model per family)
# and `-m heavy` (.ci/heavy: the every-model matrices, all notebooks, the README tours, kill -9 of every model). A
# heavy test is also marked slow, so the fast tier never runs it.


def need(module: str):
    """A test extra (jax, nbclient, ...): skipped where it is not installed, but under `CI=true` a missing extra fails
    the test, so CI never passes by skipping what it was meant to run."""
    if os.environ.get("CI", "").lower() == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module)


def optional(module: str):
    """A consumer the test extras leave out (llama-cpp-python: pip builds it from source, minutes): skipped wherever it
    is not installed, CI included; `kerasllm[gguf]` installs it."""
    return pytest.importorskip(module)


# A model small enough to train a few steps in seconds.
TINY = [
    "model_args.units=16", "model_args.embedding_dim=8", "data.sequence_length=16",
    "train.batch_size=8", "train.steps_per_epoch=3", "train.epochs=2", "train.sample_length=10",
    "train.warmup_steps=2",
]


# transformer-lm at its smallest, for chat and serving tests
TINY_LM = ["--set", "model_args.num_layers=1", "--set", "model_args.hidden_dim=16", "--set", "model_args.num_heads=2",
           "--set", "train.batch_size=8", "--set", "train.steps_per_epoch=2", "--set", "runtime.steps_per_execution=1",
           "--set", "train.sample_length=0", "--set", "runtime.jit_compile=false", "--epochs", "1"]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def tiny_args():
    return [arg for item in TINY for arg in ("--set", item)]


@pytest.fixture(scope="session")
def runner():
    return CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    """About 20,000 characters of real English prose (the start of the built-in corpus)."""
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(builtin_text("python-docs")[:20000], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, corpus_file, runner):
    """One tiny lstm-textgen run made through the CLI, shared by the read-only tests."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = runner.invoke(cli.app, ["train", "lstm-textgen", "--data", str(corpus_file), "--out", str(out), "--quiet", *tiny_args()])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def chat_data(tmp_path_factory):
    """200 generated conversations (builtin:chat-skills's kind) as OpenAI messages JSONL."""
    from kerasllm.data.chat import chat_skills

    path = tmp_path_factory.mktemp("chat") / "skills.jsonl"
    return write_jsonl(path, [{"messages": messages} for messages in chat_skills(200)])


@pytest.fixture(scope="session")
def chat_run(tmp_path_factory, chat_data, runner):
    """A tiny transformer-lm trained two steps with --task chat (context 48)."""
    out = tmp_path_factory.mktemp("runs") / "chat"
    result = runner.invoke(cli.app, ["train", "transformer-lm", "--task", "chat", "--data", str(chat_data), "--out", str(out),
                                     "--quiet", *TINY_LM, "--set", "data.sequence_length=48", "--set", "model_args.max_sequence_length=48"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory, corpus_file, runner):
    """A tiny transformer-lm trained two steps on text (context 32): a plain language model."""
    out = tmp_path_factory.mktemp("runs") / "plain"
    result = runner.invoke(cli.app, ["train", "transformer-lm", "--data", str(corpus_file), "--out", str(out), "--quiet", *TINY_LM,
                                     "--set", "data.sequence_length=32", "--set", "model_args.max_sequence_length=32"])
    assert result.exit_code == 0, result.output
    return out


@contextlib.contextmanager
def mock_tfds(name: str, splits: dict, tmp_path, num_examples: int = 8):
    """`tfds.testing.mock_data` with metadata that names the dataset's splits, as a prepared dataset has.

    Offline a builder knows no split names until it is downloaded; the mock's files stand in for that.
    """
    import tensorflow_datasets as tfds

    data_dir = tmp_path / "tfds"
    builder = tfds.builder(name, data_dir=data_dir)
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=[count], num_bytes=0, filename_template=None)
        for split, count in splits.items()
    ]))
    Path(builder.data_dir).mkdir(parents=True, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    with tfds.testing.mock_data(num_examples=num_examples, data_dir=str(data_dir), policy=tfds.testing.MockPolicy.USE_FILES):
        yield


def assert_says(message: str, *facts: str) -> None:
    """A user-facing message is one line that holds each fact a user needs (the bad value, the fix), in any wording."""
    lines = message.strip().splitlines()
    assert len(lines) == 1, message
    missing = [fact for fact in facts if fact not in lines[0]]
    assert not missing, (missing, message)
