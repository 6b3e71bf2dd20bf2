"""Text generation: next-token prediction on windows of text.

Metrics: cross-entropy loss (nats per token), perplexity, bits per token (bits
per character at the char level) and next-token accuracy.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from kerasllm.data import DataInfo
from kerasllm.data import pipeline
from kerasllm.data.text import load_text, reload_validation
from kerasllm.errors import UserError
from kerasllm.tasks import PreparedData
from kerasllm.tokenizers import Tokenizer

SAMPLE_TEMPERATURE = 0.8


def loss():
    return "sparse_categorical_crossentropy"


def metrics():
    import keras

    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def validation_dataset(ids, sequence_length: int, batch_size: int):
    """Every window of the token ids `ids`, in order."""
    windows = pipeline.language_model_windows(ids, sequence_length)
    if len(windows) == 0:
        raise UserError(
            f"the validation text has {len(ids)} tokens, too few for one window of {sequence_length + 1}; "
            "use more data, a larger data.validation_fraction or a smaller data.sequence_length"
        )
    return pipeline.language_model_dataset(windows, batch_size)


def sample_prompt(text: str, sequence_length: int) -> str:
    """The start of the first validation line that begins with a capital letter (else of the text)."""
    match = re.search(r"^[A-Z][^\n]*", text, flags=re.MULTILINE)
    line = match.group(0) if match else text
    return line[: min(30, sequence_length)]


def prepare(config, tokenizer: Tokenizer | None = None) -> PreparedData:
    """Load and split the text, fit (or reuse) the tokenizer and build the pipelines."""
    data, train = config.data, config.train
    split = load_text(data.source, data.validation_fraction)
    tokenizer = tokenizer or Tokenizer.fit(split.train, data.level, data.max_vocab)
    windows = pipeline.language_model_windows(tokenizer.encode(split.train), data.sequence_length)
    steps = pipeline.steps_in(len(windows), train.batch_size, train.steps_per_epoch, "training")
    validation = validation_dataset(tokenizer.encode(split.validation), data.sequence_length, train.batch_size)
    prompt = sample_prompt(split.validation, data.sequence_length)

    def train_dataset(first_epoch: int, epochs: int, skip_steps: int = 0):
        return pipeline.language_model_dataset(
            windows, train.batch_size, shuffle_seed=train.seed, steps_per_epoch=steps,
            first_epoch=first_epoch, epochs=epochs, skip_steps=skip_steps,
        )

    def sample(model) -> str:
        from kerasllm.generation import generate

        text = generate(model, tokenizer, prompt, train.sample_length, temperature=SAMPLE_TEMPERATURE,
                        seed=train.seed, window=data.sequence_length)
        return prompt + text

    record = dict(split.record, level=data.level, vocab_size=tokenizer.vocab_size,
                  train_windows=len(windows), sequence_length=data.sequence_length, input_length=data.sequence_length)
    return PreparedData(
        info=DataInfo(vocab_size=tokenizer.vocab_size, sequence_length=data.sequence_length),
        train=train_dataset, validation=validation, steps_per_epoch=steps,
        items_per_step=train.batch_size * data.sequence_length, unit="tokens", record=record,
        artifacts=[tokenizer], sample=sample if train.sample_length > 0 else None,
    )


def load_artifacts(run_dir: Path) -> dict:
    return {"tokenizer": Tokenizer.load(run_dir)}


def summarize(loss_value: float, accuracy: float, level: str) -> dict:
    """Loss in nats per token → perplexity and bits per token."""
    bits = loss_value / math.log(2)
    return {
        "loss": loss_value,
        "perplexity": math.exp(min(loss_value, 700)),
        "bits_per_char" if level == "char" else "bits_per_token": bits,
        "accuracy": accuracy,
    }


def report(results: dict, record: dict) -> dict:
    """The task's metrics from `model.evaluate(..., return_dict=True)`."""
    return summarize(float(results["loss"]), float(results["accuracy"]), record.get("level", "char"))


def evaluate(model, run, data: str | None = None, batch_size: int = 64) -> dict:
    """Metrics on the run's validation text, or on the whole text of `data`."""
    tokenizer = run.artifacts["tokenizer"]
    if data:
        split = load_text(data, 0.5)
        text, where = split.train + split.validation, data
    else:
        text, where = reload_validation(run.data_record), f"validation split of {run.data_record['source']}"
    sequence_length = run.config.data.sequence_length
    ids = tokenizer.encode(text)
    dataset = validation_dataset(ids, sequence_length, batch_size)
    model.compile(loss=loss(), metrics=metrics())
    results = model.evaluate(dataset, verbose=0, return_dict=True)
    return dict(report(results, {"level": tokenizer.level}), data=where, tokens=int(len(ids)),
                unknown_token_fraction=float((ids == 0).mean()))
