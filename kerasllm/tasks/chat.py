"""Chat: a causal language model trained on conversations, its loss on the assistant's replies only.

Data is JSONL conversations (`kerasllm.data.chat`: OpenAI `messages`, Alpaca or Dolly) or `builtin:chat-skills`.
A zoo run keeps its tokenizer with kerasllm's role tokens added; a run tuned from a keras-hub preset
(`hub-causal-lm`) keeps the preset's tokenizer and its family's template; the template is `chat_template.json`. Rows are
whole conversations, cut between exchanges where they are longer than the context (counts in data.json).

Metrics: cross-entropy loss over assistant tokens (nats per token), perplexity, next-token accuracy (over the same
tokens). `kerasllm chat RUN` talks to the model; `kerasllm serve RUN` serves it (OpenAI's API).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasllm import generation
from kerasllm.core.errors import UserError
from kerasllm.core.words import count
from kerasllm.data import DataInfo, pipeline
from kerasllm.data.chat import (
    chat_rows,
    check_messages,
    fit_history,
    load_conversations,
    split_conversations,
)
from kerasllm.data.chat_templates import ChatTemplate, PresetTemplate
from kerasllm.data.splits import check_unchanged
from kerasllm.tasks.text_generation import TextGeneration
from kerasllm.tokenizers import Tokenizer

DEFAULT_DATA = "builtin:chat-skills"
SPLIT_SEED = 0  # the validation split does not move with train.seed, so `evaluate` finds it again
REPLY_LENGTH = 200  # most new tokens in a reply, by default


def conversation_text(conversations: list) -> str:
    """Every message's text, one per line (what a new tokenizer is fitted on)."""
    return "\n".join(message["content"] for messages in conversations for message in messages)


def template_for(tokenizer):
    """A new chat run's template: the preset's (its family's, or a plain one) for a keras-hub tokenizer, kerasllm's own
    role tokens for a zoo tokenizer."""
    return PresetTemplate.for_tokenizer(tokenizer) if tokenizer.kind == "keras-hub" else ChatTemplate()


class Chat(TextGeneration):
    """Instruction / chat tuning of a causal LM (transformer-lm, or a keras-hub preset's): `--task chat`."""

    name = "chat"
    objective = "chat"
    quality = ("perplexity", "accuracy")
    weighted_metrics = True  # only assistant tokens weigh
    continues_prompt = False  # `generate` prints the reply, not the prompt before it
    default_data = DEFAULT_DATA

    def loss(self, spec, config=None):
        import keras

        # the mean over the assistant's tokens (weight 1), not over every position of a padded row
        return keras.losses.SparseCategoricalCrossentropy(from_logits=spec.output == "logits", reduction="mean_with_sample_weight")

    def rows(self, conversations, tokenizer, template, sequence_length: int, what: str):
        ids, weights, counts = chat_rows(template, tokenizer, conversations, sequence_length, tokenizer.special_id("pad") or 0)
        if not len(ids):
            raise UserError(f"no {what} conversation fits the context of {sequence_length} tokens (every exchange is longer); "
                            "raise data.sequence_length and model_args.max_sequence_length, or use shorter conversations")
        return ids, weights, counts

    def prepare(self, config, spec, artifacts: dict | None = None):
        from kerasllm.tasks.base import PreparedData

        data, train = config.data, config.train
        loaded = load_conversations(data.source)
        train_part, validation_part = split_conversations(loaded.conversations, data.validation_fraction, SPLIT_SEED)
        artifacts = artifacts or {}
        tokenizer = artifacts.get("tokenizer") or Tokenizer.fit(conversation_text(train_part), data.tokenizer, data.vocab_size)
        template = artifacts.get("chat_template") or template_for(tokenizer)
        inherited_vocabulary = tokenizer.vocab_size
        if template.specials:  # kerasllm's role tokens, added to a zoo tokenizer (a preset's template uses its own)
            tokenizer = tokenizer.with_specials(template.specials)
        tokenizer = template.bind(tokenizer)
        ids, weights, counts = self.rows(train_part, tokenizer, template, data.sequence_length, "training")
        held_ids, held_weights, held_counts = self.rows(validation_part, tokenizer, template, data.sequence_length, "validation")
        steps = pipeline.steps_in(len(ids), train.batch_size, train.steps_per_epoch, "training", config.runtime.steps_per_execution)

        def train_dataset(first_epoch: int, epochs: int, skip_steps: int = 0):
            return pipeline.array_dataset(ids[:, :-1], ids[:, 1:], train.batch_size, weights=weights[:, 1:], shuffle_seed=train.seed,
                                          steps_per_epoch=steps, first_epoch=first_epoch, epochs=epochs, skip_steps=skip_steps)

        first_user = next(m for m in validation_part[0] if m["role"] in ("user", "system"))
        question = [first_user] if first_user["role"] == "user" else validation_part[0][:2]

        def sample(model) -> str:
            reply = Replier(model, tokenizer, template, spec, data.sequence_length)(question, max_length=train.sample_length,
                                                                                    temperature=0.0)
            return f"{question[-1]['content']} → {reply}"

        unknown = float(np.mean(ids[weights > 0] == tokenizer.unk_id)) if weights.any() else 0.0
        record = dict(loaded.record, source=loaded.source, shape=loaded.shape, split=f"seeded shuffle ({SPLIT_SEED}), last "
                      f"{data.validation_fraction:.0%} of conversations for validation", validation_fraction=data.validation_fraction,
                      tokenizer=tokenizer.kind, vocab_size=tokenizer.vocab_size, added_tokens=tokenizer.vocab_size - inherited_vocabulary
                      if artifacts.get("tokenizer") else 0, sequence_length=data.sequence_length, input_length=data.sequence_length,
                      template=template.kind, train=counts, validation=held_counts, unknown_token_fraction=unknown)
        return PreparedData(
            info=DataInfo(vocab_size=tokenizer.vocab_size, sequence_length=data.sequence_length),
            train=train_dataset,
            validation=pipeline.array_dataset(held_ids[:, :-1], held_ids[:, 1:], train.batch_size, weights=held_weights[:, 1:]),
            steps_per_epoch=steps, items_per_step=train.batch_size * data.sequence_length, unit="tokens", record=record,
            artifacts=[tokenizer, template], sample=sample if train.sample_length > 0 else None,
        )

    def notes(self, record: dict) -> list[str]:
        """Conversations left out for an empty reply, and kept ones that ask with an empty message."""
        found = []
        if record.get("without_a_reply"):
            found.append(f"{count(record['without_a_reply'], 'conversation')} of {record['source']} left out: every assistant "
                         "message in them is empty, and the loss covers the replies only")
        if record.get("empty_user_messages"):
            found.append(f"{count(record['empty_user_messages'], 'conversation')} of {record['source']} "
                         f"{'has' if record['empty_user_messages'] == 1 else 'have'} an empty user message (kept)")
        return found

    def load_artifacts(self, run_dir: Path) -> dict:
        template = ChatTemplate.load(run_dir)
        return {"tokenizer": template.bind(Tokenizer.load(run_dir)), "chat_template": template}

    def report(self, results: dict, record: dict) -> dict:
        loss = float(results["loss"])
        return {"loss": loss, "perplexity": math.exp(min(loss, 700)), "accuracy": float(results["accuracy"])}

    def evaluate(self, model, run, data: str | None = None, batch_size: int = 64) -> dict:
        """Loss, perplexity and accuracy over the assistant tokens of the run's validation conversations, or of all of `data`."""
        record, tokenizer, template = run.data_record, run.artifacts["tokenizer"], run.artifacts["chat_template"]
        loaded = load_conversations(data or record["source"])
        if data:
            conversations, where = loaded.conversations, data
        else:
            check_unchanged(dict(loaded.record, source=loaded.source), record)
            conversations = split_conversations(loaded.conversations, record.get("validation_fraction", 0.1), SPLIT_SEED)[1]
            where = f"validation split of {record['source']}"
        ids, weights, counts = self.rows(conversations, tokenizer, template, run.config.data.sequence_length, "evaluation")
        model.compile(loss=self.loss(run.spec), weighted_metrics=self.metrics(run.spec))
        dataset = pipeline.array_dataset(ids[:, :-1], ids[:, 1:], batch_size, weights=weights[:, 1:])
        results = model.evaluate(dataset, verbose=0, return_dict=True)
        return dict(self.report(results, record), data=where, conversations=counts["conversations"],
                    assistant_tokens=counts["assistant_tokens"])

    # --- replies ------------------------------------------------------------------------------
    def replier(self, model, run) -> "Replier":
        """What writes the assistant's replies for a chat run's model (`kerasllm chat`, `generate`)."""
        context = run.config.data.sequence_length
        return Replier(model, run.artifacts["tokenizer"], run.artifacts["chat_template"], run.spec, context,
                       generation.make_decoder(model, run.spec, context))

    def generate(self, model, run, prompts: list[str], *, max_length: int = REPLY_LENGTH, beam: int = 0, on_text=None,
                 on_note=None, **sampling) -> list[str]:
        """`kerasllm generate` on a chat run: each prompt is one user message, and the text is the reply."""
        generation.check_beam_fits(beam, run.artifacts["tokenizer"].vocab_size, sampling.get("top_k", 0))
        replier = self.replier(model, run)
        replies = []
        for row, prompt in enumerate(prompts):
            stream = (lambda text, row=row: on_text(row, text)) if on_text else None
            replies.append(replier([{"role": "user", "content": prompt}], max_length=max_length, on_text=stream, on_note=on_note,
                                   beam_width=beam, **sampling))
        return replies

    def data_lines(self, record: dict) -> list[str]:
        train, held = record.get("train", {}), record.get("validation", {})
        return [
            f"Source: `{record.get('source')}` ({record.get('shape')} shape, sha256 `{str(record.get('sha256', ''))[:16]}…`); "
            f"split: {record.get('split')}.",
            f"Conversations: {train.get('conversations', 0):,} for training in {train.get('rows', 0):,} rows of "
            f"{record.get('sequence_length')} tokens ({train.get('cut_conversations', 0):,} cut between exchanges, "
            f"{train.get('dropped_exchanges', 0):,} exchanges longer than the context left out); {held.get('conversations', 0):,} "
            f"for validation. The loss covers the {train.get('assistant_tokens', 0):,} assistant tokens only.",
            f"Tokenizer: {record.get('tokenizer')}, {record.get('vocab_size')} tokens; chat template: {record.get('template')}"
            + {"kerasllm": " (kerasllm's role tokens).", "plain": " (User: and Assistant: lines, each reply ending with the "
               "preset's end token)."}.get(record.get("template"), " (the preset family's own)."),
        ]

    def usage(self, run_dir: Path) -> list[str]:
        return [f"kerasllm chat {run_dir}", f"kerasllm serve {run_dir}", f"kerasllm evaluate {run_dir}"]


@dataclass
class Replier:
    """Writes the assistant's next message after a conversation, with a chat run's model, tokenizer and template.

    The reply is generated after the template's assistant header and ends at its end token (the tokenizer's `eos_id`
    once the template is bound to it). The oldest turns are left out when
    the conversation is longer than `context` (said through `on_note`). `decoder` is reused between replies (None:
    one is made for each).
    """

    model: object
    tokenizer: object
    template: ChatTemplate
    spec: object
    context: int
    decoder: object = None

    def __call__(self, messages: list[dict], *, max_length: int = REPLY_LENGTH, on_text=None, on_note=None, **sampling) -> str:
        """The reply; `on_text(text)` receives it as it is written; `sampling` as `kerasllm.generation.generate` takes it."""
        messages = check_messages(messages, "the conversation", need_assistant=False)
        fitted, dropped = fit_history(self.template, self.tokenizer, messages, max(1, self.context - min(max_length, self.context // 2)))
        if dropped and on_note:
            on_note(f"the conversation is longer than the model's context of {self.context} tokens; its oldest "
                    f"{count(dropped, 'message')} {'are' if dropped > 1 else 'is'} left out of this reply")
        prompt = self.template.prompt(self.tokenizer, fitted)
        stream = (lambda _, text: on_text(text)) if on_text else None
        return generation.generate_ids(self.model, self.tokenizer, [prompt], max_length, decoder=self.decoder, spec=self.spec,
                                       window=self.context, on_text=stream, **{"temperature": 0.8, **sampling, "allow_eos": True})[0]
