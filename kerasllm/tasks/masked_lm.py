"""Masked-language-model pretraining on unlabelled text (BERT's objective).

Each line of text (long lines in pieces) becomes `[CLS] tokens [SEP] [PAD]…`; keras-hub's
`MaskedLMMaskGenerator` picks 15% of the tokens in tf.data (80% become [MASK], 10% a
random token, 10% stay) and the model predicts the original ids at those positions.
Metrics: loss (nats per masked token), perplexity, accuracy, all over masked tokens only.
The pretrained encoder is a base for `kerasllm finetune` (its masked-LM head is dropped).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from kerasllm.core.errors import UserError
from kerasllm.data import DataInfo, pipeline
from kerasllm.data.packing import Packer
from kerasllm.data.text import evaluation_text, load_text
from kerasllm.tasks.base import PreparedData, Task
from kerasllm.tokenizers import Tokenizer

# Lazy imports: Keras, keras-hub and TensorFlow are imported inside methods: `kerasllm --help` and `kerasllm list`
# load this module and must not load them.

MASK_RATE = 0.15


def masked_positions(sequence_length: int) -> int:
    """How many positions per row the mask generator returns (a static shape)."""
    return max(1, math.ceil(MASK_RATE * sequence_length))


class MaskedLM(Task):
    """Masked-LM pretraining of an encoder on text from any text source."""

    name = "masked-lm"
    quality = ("perplexity", "accuracy")
    objective = "mlm"
    weighted_metrics = True  # padding positions among the masked ones weigh 0

    def loss(self, spec, config=None):
        import keras

        # the mean over real masked positions (weight 1), not over every returned position
        return keras.losses.SparseCategoricalCrossentropy(from_logits=spec.output == "logits", reduction="mean_with_sample_weight")

    def masker(self, tokenizer):
        import keras_hub

        specials = [tokenizer.special_id(name) for name in ("pad", "cls", "sep", "bos", "eos")]
        return keras_hub.layers.MaskedLMMaskGenerator(
            vocabulary_size=tokenizer.vocab_size, mask_selection_rate=MASK_RATE, mask_token_id=tokenizer.special_id("mask"),
            mask_selection_length=None, unselectable_token_ids=[i for i in specials if i is not None])

    def dataset(self, rows: np.ndarray, tokenizer, batch_size: int, fixed: bool = False, **batching):
        """(inputs {tokens, mask_positions}, original ids, weights) batches; `fixed`: the same masks every pass."""
        import tensorflow as tf

        masker = self.masker(tokenizer)
        length = masked_positions(rows.shape[1])
        masker.mask_selection_length = length

        def mask(tokens, _):
            out = masker(tokens)
            inputs = {"tokens": out["token_ids"], "mask_positions": tf.cast(out["mask_positions"], tf.int32)}
            return inputs, tf.cast(out["mask_ids"], tf.int32), tf.cast(out["mask_weights"], tf.float32)

        dataset = pipeline.array_dataset(rows, np.zeros(len(rows), np.int32), batch_size, **batching).map(mask)
        return dataset.cache() if fixed else dataset

    def prepare(self, config, spec, artifacts: dict | None = None) -> PreparedData:
        data, train = config.data, config.train
        split = load_text(data.source, data.validation_fraction)
        tokenizer = (artifacts or {}).get("tokenizer") or Tokenizer.fit(split.train, data.tokenizer, data.vocab_size,
                                                                        encoder_tokens=True)
        if tokenizer.special_id("mask") is None:
            raise UserError("masked-LM needs a tokenizer with a [MASK] token; fit a new one (do not resume from a text-generation run)")
        packer = Packer(tokenizer, data.sequence_length)
        train_rows, validation_rows = packer.chunks(split.train.split("\n")), packer.chunks(split.validation.split("\n"))
        if len(validation_rows) == 0:
            raise UserError("the validation text has no line of two tokens or more; use more data or a larger data.validation_fraction")
        steps = pipeline.steps_in(len(train_rows), train.batch_size, train.steps_per_epoch, "training", config.runtime.steps_per_execution)

        def train_dataset(first_epoch: int, epochs: int, skip_steps: int = 0):
            return self.dataset(train_rows, tokenizer, train.batch_size, shuffle_seed=train.seed, steps_per_epoch=steps,
                                first_epoch=first_epoch, epochs=epochs, skip_steps=skip_steps)

        tokens = int((train_rows > 0).sum())
        record = dict(split.record, tokenizer=tokenizer.kind, vocab_size=tokenizer.vocab_size, sequence_length=data.sequence_length,
                      input_length=data.sequence_length, train_rows=len(train_rows), validation_rows=len(validation_rows),
                      train_tokens=tokens, masked_positions=masked_positions(data.sequence_length))
        return PreparedData(
            info=DataInfo(vocab_size=tokenizer.vocab_size, sequence_length=data.sequence_length, pad_id=packer.pad_id,
                          sep_id=packer.sep_id, objective="mlm"),
            train=train_dataset, validation=self.dataset(validation_rows, tokenizer, train.batch_size, fixed=True),
            steps_per_epoch=steps, items_per_step=train.batch_size, unit="rows", record=record, artifacts=[tokenizer],
        )

    def load_artifacts(self, run_dir: Path) -> dict:
        return {"tokenizer": Tokenizer.load(run_dir)}

    def report(self, results: dict, record: dict) -> dict:
        loss = float(results["loss"])
        return {"loss": loss, "perplexity": math.exp(min(loss, 700)), "accuracy": float(results["accuracy"])}

    def evaluate(self, model, run, data: str | None = None, batch_size: int = 64) -> dict:
        """Masked-token loss, perplexity and accuracy on the run's validation text or all of `data`."""
        tokenizer = run.artifacts["tokenizer"]
        text, where = evaluation_text(run.data_record, data)
        import keras

        keras.utils.set_random_seed(run.config.train.seed)  # the same masks every time
        rows = Packer(tokenizer, run.config.data.sequence_length).chunks(text.split("\n"))
        if len(rows) == 0:
            raise UserError(f"{where} has no line of two tokens or more")
        model.compile(loss=self.loss(run.spec), weighted_metrics=self.metrics(run.spec))
        results = model.evaluate(self.dataset(rows, tokenizer, batch_size), verbose=0, return_dict=True)
        return dict(self.report(results, run.data_record), data=where, rows=len(rows))

    def export_sample(self, model, run, batch: int = 2):
        length = run.data_record.get("input_length", 16) if run else 16
        vocab = run.artifacts["tokenizer"].vocab_size if run else 8
        rng = np.random.default_rng(0)
        return {"tokens": rng.integers(7 if vocab > 8 else 1, vocab, size=(batch, length)).astype("int32"),
                "mask_positions": np.tile(np.arange(masked_positions(length), dtype="int32"), (batch, 1))}

    def data_lines(self, record: dict) -> list[str]:
        return [
            f"Source: `{record.get('source')}` ({record.get('characters', 0):,} characters, sha256 `{str(record.get('sha256', ''))[:16]}…`); "
            f"split: {record.get('split')}.",
            f"Tokenizer: {record.get('tokenizer')}, {record.get('vocab_size')} tokens; {record.get('train_rows', 0):,} training rows of "
            f"{record.get('sequence_length')} tokens, {record.get('masked_positions')} masked positions each.",
        ]

    def usage(self, run_dir: Path) -> list[str]:
        return [f"kerasllm evaluate {run_dir}", f"kerasllm finetune {run_dir} --data LABELLED.csv",
                f"kerasllm finetune {run_dir} --data LABELLED.csv --method lora"]
