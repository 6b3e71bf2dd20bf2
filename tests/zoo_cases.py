"""Tiny settings and local data for every registered model, for the tests that train the whole zoo one step.

`write_cases(folder)` writes the data once and returns `{model: [config settings]}`. Batches are per replica.
"""

from __future__ import annotations

from pathlib import Path

from kerasllm import catalog
from kerasllm.data.text import builtin_text

ONE_STEP = ["train.epochs=1", "train.steps_per_epoch=1", "train.sample_length=0", "train.warmup_steps=0",
            "train.validation_steps=1"]


# Models the every-model matrices (export formats, exact resume, replicas) leave out, and where they are tested instead.
NOT_IN_THE_MATRICES = {
    "hub-causal-lm": "made by `finetune PRESET --task chat` only (no `train`, no dropout setting): tests/serve/test_chat_presets.py",
}


def matrix_names() -> list[str]:
    """The registered models the every-model matrices run (all but NOT_IN_THE_MATRICES)."""
    return [name for name in catalog.names() if name not in NOT_IN_THE_MATRICES]


def cli_args(name: str, settings: list[str], run_dir: Path) -> list[str]:
    """The `kerasllm` arguments that train `name` with `settings` into `run_dir` (hub-classifier: `finetune` its preset)."""
    sets = [arg for item in settings if not item.startswith("finetune.base=") for arg in ("--set", item)]
    base = next((item.partition("=")[2] for item in settings if item.startswith("finetune.base=")), None)
    head = ["finetune", base] if base else ["train", name]
    return [*head, "--out", str(run_dir), "--quiet", *sets]


def write_data(folder: Path) -> None:
    """The local data of every case (it builds keras-hub models: TensorFlow starts)."""
    from tests.tasks.test_seq2seq import reverse_pairs
    from tests.tasks.test_text_classification import save_tiny_presets, write_sst

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.txt").write_text(builtin_text("python-docs")[:6000], encoding="utf-8")
    write_sst(folder, sizes=(64, 16, 16))
    (folder / "pairs.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in reverse_pairs(200)), encoding="utf-8")
    save_tiny_presets(folder / "presets")


def cases(folder: Path, batch_size: int = 4) -> dict[str, list[str]]:
    """`{model: [config settings]}` for data `write_data(folder)` wrote (no TensorFlow op runs here)."""
    folder = Path(folder)
    corpus, sst, pairs, bert = folder / "corpus.txt", folder / "toy", folder / "pairs.tsv", folder / "presets" / "bert"
    common = [*ONE_STEP, f"train.batch_size={batch_size}"]
    text = ["data.tokenizer=word", "data.vocab_size=60", "data.sequence_length=12"]
    found = {
        "lstm-textgen": [f"data.source={corpus}", "model_args.units=16", "model_args.embedding_dim=8", "data.sequence_length=16"],
        "transformer-lm": [f"data.source={corpus}", "model_args.num_layers=1", "model_args.num_heads=2", "model_args.hidden_dim=16",
                           "model_args.max_sequence_length=16", "data.sequence_length=16", "runtime.steps_per_execution=1"],
        "cnn-classifier": ["data.source=builtin:digits", "model_args.width=4", "model_args.depth=1", "model_args.convs_per_block=1"],
        "lstm-classifier": [f"data.source={sst}", "model_args.units=8", "model_args.embedding_dim=8", "data.sequence_length=16"],
        "transformer-classifier": [f"data.source={sst}", "model_args.num_layers=1", "model_args.hidden_dim=16",
                                   "model_args.num_heads=2", "model_args.intermediate_dim=32", "data.sequence_length=16",
                                   "data.vocab_size=120"],
        "hub-classifier": [f"data.source={sst}", f"finetune.base={bert}", "data.sequence_length=16"],  # via `kerasllm finetune`
        "transformer-seq2seq": [f"data.source={pairs}", *text, "model_args.num_layers=1", "model_args.hidden_dim=16",
                                "model_args.num_heads=2", "model_args.intermediate_dim=32"],
        "lstm-seq2seq": [f"data.source={pairs}", *text, "model_args.units=16", "model_args.embedding_dim=8"],
    }
    missing = set(catalog.names()) - set(found) - set(NOT_IN_THE_MATRICES)
    assert not missing, f"give these models a tiny case in tests/zoo_cases.py: {sorted(missing)}"
    # no dropout: one device and several must see the same computation
    return {name: [*common, "model_args.dropout=0.0", *settings] for name, settings in found.items()}


def write_cases(folder: Path, batch_size: int = 4) -> dict[str, list[str]]:
    write_data(folder)
    return cases(folder, batch_size)
