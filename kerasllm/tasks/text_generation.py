"""Text generation: next-token prediction on windows of text.

Metrics: cross-entropy loss (nats per token), perplexity, bits per token and bits
per character (from the characters the predicted tokens cover, so runs with
different tokenizers compare), next-token accuracy.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from kerasllm import generation
from kerasllm.core.errors import UserError
from kerasllm.core.quiet import captured_stderr
from kerasllm.data import DataInfo, pipeline
from kerasllm.data.text import evaluation_text, load_text
from kerasllm.tasks.base import Endpoint, PreparedData, Task
from kerasllm.tokenizers import Tokenizer

SAMPLE_TEMPERATURE = 0.8


def validation_windows(ids: np.ndarray, sequence_length: int) -> np.ndarray:
    windows = pipeline.language_model_windows(ids, sequence_length)
    if len(windows) == 0:
        raise UserError(
            f"the validation text has {len(ids)} tokens, too few for one window of {sequence_length + 1}; "
            "use more data, a larger data.validation_fraction or a smaller data.sequence_length"
        )
    return windows


def characters_per_token(tokenizer: Tokenizer, windows: np.ndarray) -> float:
    """Characters covered by the predicted tokens (every window's targets), per token."""
    targets = windows[:, 1:].reshape(-1)
    return len(tokenizer.decode(targets)) / max(len(targets), 1)


def sample_prompt(text: str, sequence_length: int) -> str:
    """The start of the first validation line that begins with a capital letter (else of the text)."""
    match = re.search(r"^[A-Z][^\n]*", text, flags=re.MULTILINE)
    line = match.group(0) if match else text
    return line[: min(30, sequence_length)]


def summarize(loss_value: float, accuracy: float, kind: str, chars_per_token: float = 1.0) -> dict:
    """Loss in nats per token → perplexity, bits per token and bits per character."""
    bits = loss_value / math.log(2)
    results = {"loss": loss_value, "perplexity": math.exp(min(loss_value, 700))}
    if kind == "char":
        results["bits_per_char"] = bits
    else:
        results["bits_per_token"] = bits
        results["bits_per_char"] = bits / max(chars_per_token, 1e-9)
    results["accuracy"] = accuracy
    return results


CHECKED_TOKENS = 24  # new tokens a SavedModel's `generate` is checked on, per prompt


def check_prompts(run, budget: int) -> list[str]:
    """Prompts of a few lengths from the run's validation text (its words; "The " if the text has moved), each at
    most `budget` tokens (0: any), so that its continuation fits the context."""
    tokenizer = run.artifacts["tokenizer"]
    try:
        words = evaluation_text(run.data_record, None)[0].split(" ")
    except (UserError, OSError):
        words = []
    prompts = [" ".join(words[start:start + count]) + " " for start, count in ((0, 1), (3, 2), (10, 4), (20, 6)) if len(words) > 30]
    fits = lambda text: not budget or len(tokenizer.encode(text)) <= budget
    found = []
    for prompt in prompts:
        while prompt and not fits(prompt):
            prompt = prompt[1:]
        if prompt.strip():
            found.append(prompt)
    return found or ["The "[: budget or 4]]


class TextGeneration(Task):
    """Language modelling on a text source with any kerasllm tokenizer."""

    name = "text-generation"
    quality = ("perplexity", "bits_per_char", "accuracy")
    objective = "causal-lm"
    can_generate = True

    def prepare(self, config, spec, artifacts: dict | None = None) -> PreparedData:
        data, train = config.data, config.train
        split = load_text(data.source, data.validation_fraction)
        tokenizer = (artifacts or {}).get("tokenizer") or Tokenizer.fit(split.train, data.tokenizer, data.vocab_size)
        train_ids = tokenizer.encode(split.train)
        windows = pipeline.language_model_windows(train_ids, data.sequence_length)
        if len(windows) == 0:
            raise UserError(f"the training text has {len(train_ids)} tokens, too few for one window of "
                            f"{data.sequence_length + 1}; use more data or a smaller data.sequence_length")
        steps = pipeline.steps_in(len(windows), train.batch_size, train.steps_per_epoch, "training", config.runtime.steps_per_execution)
        held_out = validation_windows(tokenizer.encode(split.validation), data.sequence_length)
        prompt = sample_prompt(split.validation, data.sequence_length)

        def train_dataset(first_epoch: int, epochs: int, skip_steps: int = 0):
            if data.windows == "random":
                return pipeline.random_window_dataset(train_ids, data.sequence_length, train.batch_size, shuffle_seed=train.seed,
                                                      steps_per_epoch=steps, first_epoch=first_epoch, epochs=epochs,
                                                      skip_steps=skip_steps)
            return pipeline.language_model_dataset(
                windows, train.batch_size, shuffle_seed=train.seed, steps_per_epoch=steps,
                first_epoch=first_epoch, epochs=epochs, skip_steps=skip_steps,
            )

        def sample(model) -> str:
            text = generation.generate(model, tokenizer, [prompt], train.sample_length, temperature=SAMPLE_TEMPERATURE,
                            seed=train.seed, window=data.sequence_length, spec=spec)[0]
            return prompt + text

        record = dict(split.record, tokenizer=tokenizer.kind, vocab_size=tokenizer.vocab_size,
                      train_windows=len(windows), sequence_length=data.sequence_length, input_length=data.sequence_length,
                      characters_per_token=characters_per_token(tokenizer, held_out))
        return PreparedData(
            info=DataInfo(vocab_size=tokenizer.vocab_size, sequence_length=data.sequence_length),
            train=train_dataset, validation=pipeline.language_model_dataset(held_out, train.batch_size),
            steps_per_epoch=steps, items_per_step=train.batch_size * data.sequence_length, unit="tokens", record=record,
            artifacts=[tokenizer], sample=sample if train.sample_length > 0 else None,
        )

    def load_artifacts(self, run_dir: Path) -> dict:
        return {"tokenizer": Tokenizer.load(run_dir)}

    def report(self, results: dict, record: dict) -> dict:
        kind = record.get("tokenizer", record.get("level", "char"))
        return summarize(float(results["loss"]), float(results["accuracy"]), kind, record.get("characters_per_token", 1.0))

    def evaluate(self, model, run, data: str | None = None, batch_size: int = 64) -> dict:
        """Metrics on the run's validation text, or on the whole text of `data`."""
        tokenizer = run.artifacts["tokenizer"]
        text, where = evaluation_text(run.data_record, data)
        ids = tokenizer.encode(text)
        windows = validation_windows(ids, run.config.data.sequence_length)
        model.compile(loss=self.loss(run.spec), metrics=self.metrics(run.spec))
        results = model.evaluate(pipeline.language_model_dataset(windows, batch_size), verbose=0, return_dict=True)
        record = {"tokenizer": tokenizer.kind, "characters_per_token": characters_per_token(tokenizer, windows)}
        return dict(self.report(results, record), data=where, tokens=int(len(ids)),
                    unknown_token_fraction=float((ids == tokenizer.unk_id).mean()))

    def generate(self, model, run, prompts: list[str], *, max_length: int = 300, beam: int = 0, on_text=None, on_note=None,
                 **sampling) -> list[str]:
        """Continuations of the prompts (streamed through `on_text`); a prompt longer than the context is cut from the left.
        `sampling`: `kerasllm.generation.Sampling`'s temperature, top_k, top_p, seed and stop."""
        tokenizer = run.artifacts["tokenizer"]
        generation.check_beam_fits(beam, tokenizer.vocab_size, sampling.get("top_k", 0))
        context = getattr(run.config.model_args, "max_sequence_length", 0)
        for text in prompts:
            length = len(tokenizer.encode(text))
            if context and length > context and on_note:
                on_note(f"the prompt has {length} tokens, more than the model's context of {context}; only its last {context} are used")
        return generation.generate(model, tokenizer, prompts, max_length, window=run.config.data.sequence_length, spec=run.spec,
                                   on_text=on_text, beam_width=beam, **{"temperature": 0.8, **sampling})

    def savedmodel_endpoints(self, model, run) -> list:
        """`generate(prompt: string, max_new_tokens: int32) -> string`: the continuation, greedy, with the tokenizer and
        the model's cached decoding loop in the graph (`tf_greedy` of its decoder: transformer-lm's key/value cache,
        lstm-textgen's carried states). In the graph a prompt keeps its last context - 1 tokens and the continuation
        stops where the context is full. Checked against `kerasllm generate` (greedy) on pieces of the validation text."""
        import tensorflow as tf

        tokenizer = run.artifacts["tokenizer"]
        decoder = generation.make_decoder(model, run.spec, run.config.data.sequence_length)
        if self.name != "text-generation" or not hasattr(decoder, "tf_greedy") or not hasattr(tokenizer, "tf_encode"):
            return []
        context = getattr(decoder, "context", 0)
        penalty = np.zeros(tokenizer.vocab_size, np.float32)
        penalty[generation.banned_ids(tokenizer, allow_eos=False)] = -np.inf
        empty = int(generation.encode_prompt(tokenizer, "")[-1])

        def generate(prompts, max_new_tokens):
            ids = tokenizer.tf_encode(prompts)
            if context:
                ids = ids[:, -(context - 1):]
            lengths = tf.cast(ids.row_lengths(), tf.int32)
            dense = tf.pad(ids.to_tensor(default_value=0), [[0, 0], [0, 1]])  # at least one column
            if context:
                dense = dense[:, :context]
                dense = tf.pad(dense, [[0, 0], [0, context - tf.shape(dense)[1]]])
            dense = tf.concat([tf.where(lengths == 0, empty, dense[:, 0])[:, None], dense[:, 1:]], axis=1)  # "" starts a line
            lengths = tf.maximum(lengths, 1)
            steps = tf.maximum(max_new_tokens, 0)
            if context:
                steps = tf.minimum(steps, context - tf.reduce_max(lengths))
            return tokenizer.tf_decode(decoder.tf_greedy(dense, lengths, steps, tf.constant(penalty)))

        steps = min(CHECKED_TOKENS, context // 2) if context else CHECKED_TOKENS
        prompts = check_prompts(run, context - steps if context else 0)

        def check(loaded) -> str:
            with captured_stderr():  # oneDNN's "supports DT_INT32 only on platforms with AVX-512" at the first call
                found = loaded.generate(tf.constant(prompts), tf.constant(steps)).numpy()
            graph = [text.decode("utf-8") for text in found]
            python = self.generate(model, run, prompts, max_length=steps, temperature=0.0)
            wrong = [(p, g, t) for p, g, t in zip(prompts, graph, python) if g != t]
            return f"{len(wrong)} of {len(prompts)} continuations, e.g. {wrong[0][0]!r}: {wrong[0][1]!r} vs {wrong[0][2]!r}" if wrong else ""

        usage = 'print("generate:", loaded.generate(tf.constant([{example}]), tf.constant(40)).numpy()[0].decode())'
        return [Endpoint("generate", generate, [tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.int32)],
                         [tokenizer.lookup_table()], check, example=prompts[0], usage=usage)]

    def export_sample(self, model, run, batch: int = 2) -> np.ndarray:
        length = run.data_record.get("input_length", 16) if run else 16
        vocab = run.artifacts["tokenizer"].vocab_size if run else 2
        return np.random.default_rng(0).integers(0, vocab, size=(batch, length)).astype("int32")

    def data_lines(self, record: dict) -> list[str]:
        kind = record.get("tokenizer", record.get("level", "char"))
        return [
            f"Source: `{record.get('source')}` ({record.get('characters', 0):,} characters, sha256 `{str(record.get('sha256', ''))[:16]}…`).",
            f"Split: {record.get('split')}. Tokenizer: {kind}, {record.get('vocab_size')} tokens; "
            f"windows of {record.get('sequence_length')} tokens ({record.get('train_windows', 0):,} for training).",
        ]

    def usage(self, run_dir: Path) -> list[str]:
        return [f"kerasllm evaluate {run_dir}", f'kerasllm generate {run_dir} --prompt "The "',
                f"kerasllm export {run_dir} --format savedmodel"]
