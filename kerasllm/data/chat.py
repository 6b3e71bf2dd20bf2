"""Chat data: conversations from JSONL and training rows whose loss covers the assistant only.

JSONL shapes, detected from the first record (every record must have the same shape):

* `messages` (OpenAI): `{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}`, multi-turn;
* `alpaca`: `{"instruction", "input", "output"}` (`input` may be empty or absent);
* `dolly`: `{"instruction", "context", "response"}` (`context` may be empty).

Each becomes a list of `{"role", "content"}` messages. The zoo's template (`ChatTemplate`, kind `kerasllm`, in
`kerasllm.data.chat_templates` with the keras-hub presets' ones) puts one special token before each message's text and
`[EOS]` after it:

    [SYSTEM] You are brief. [EOS] [USER] Hi! [EOS] [ASSISTANT] Hello. [EOS]

The special tokens are placed by id, so no text a user types can turn into one. A reply is generated after
`[ASSISTANT]` and ends at `[EOS]`. In training, the targets that carry weight are the assistant's tokens and the
`[EOS]` that ends each reply; system and user tokens weigh 0.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kerasllm.core import files
from kerasllm.core.errors import UserError
from kerasllm.core.words import count
from kerasllm.data.chat_templates import ROLES, ChatTemplate
from kerasllm.data.text import read_text_file

SHAPES = {
    "messages": ("messages",),
    "alpaca": ("instruction", "output"),
    "dolly": ("instruction", "response"),
}
SHAPES_HELP = ('OpenAI {"messages": [{"role", "content"}, ...]}, Alpaca {"instruction", "input", "output"} '
               'or Dolly {"instruction", "context", "response"}')


# --- reading conversations -------------------------------------------------------------------

def detect_shape(record) -> str | None:
    """`messages`, `alpaca` or `dolly` for a JSONL record of that shape, else None."""
    if not isinstance(record, dict):
        return None
    return next((shape for shape, keys in SHAPES.items() if all(key in record for key in keys)), None)


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where} must be a string, not {type(value).__name__}")
    return value


def _joined(first: str, second) -> str:
    """An instruction and its input (or context), one paragraph apart; the instruction alone when there is none."""
    second = "" if second is None else second
    return f"{first}\n\n{second}" if isinstance(second, str) and second.strip() else first


def messages_of(record: dict, shape: str, where: str) -> list[dict]:
    """A record of `shape` as checked `{"role", "content"}` messages."""
    if shape == "alpaca":
        user = _joined(_text(record["instruction"], f"{where}: instruction"), record.get("input"))
        return [{"role": "user", "content": user}, {"role": "assistant", "content": _text(record["output"], f"{where}: output")}]
    if shape == "dolly":
        user = _joined(_text(record["instruction"], f"{where}: instruction"), record.get("context"))
        return [{"role": "user", "content": user}, {"role": "assistant", "content": _text(record["response"], f"{where}: response")}]
    return check_messages(record["messages"], where)


def check_messages(messages, where: str = "messages", need_assistant: bool = True) -> list[dict]:
    """`{"role", "content"}` messages: known roles, string contents, a system message only first."""
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: messages must be a non-empty list of {{\"role\", \"content\"}} objects")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise UserError(f"{where}: message {i + 1} must be an object with \"role\" and \"content\"")
        role = message["role"]
        if role not in ROLES:
            raise UserError(f"{where}: message {i + 1} has role {role!r}; roles are system, user and assistant")
        if role == "system" and i > 0:
            raise UserError(f"{where}: message {i + 1} is a system message; only the first message may be one")
        checked.append({"role": role, "content": _text(message["content"], f"{where}: message {i + 1}'s content")})
    if need_assistant and not any(m["role"] == "assistant" for m in checked):
        raise UserError(f"{where}: the conversation has no assistant message, so nothing to learn from")
    return checked


@dataclass
class Conversations:
    """Conversations (lists of messages) read from one source, and how they were read."""

    conversations: list
    shape: str
    source: str
    record: dict = field(default_factory=dict)


def read_jsonl(path: Path) -> Conversations:
    """Every record of a JSONL file, in the one shape its first record has."""
    if not path.is_file():
        raise UserError(f"chat data {path} {files.absent(path)}; pass a JSONL file of conversations")
    text = read_text_file(path)
    conversations, shape = [], None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{where} is not JSON ({error.msg}); chat data is JSONL, one conversation per line: {SHAPES_HELP}") from None
        found = detect_shape(record)
        if found is None:
            keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
            raise UserError(f"{where} has {keys or 'no keys'}; chat data must be {SHAPES_HELP}")
        if shape is None:
            shape = found
        elif found != shape:
            raise UserError(f"{where} is in the {found} shape but the file started in the {shape} shape; use one shape per file")
        conversations.append(messages_of(record, shape, where))
    if not conversations:
        raise UserError(f"{path} holds no conversation; chat data must be JSONL of {SHAPES_HELP}")
    kept = [c for c in conversations if any(m["role"] == "assistant" and m["content"].strip() for m in c)]
    if not kept:
        raise UserError(f"every conversation in {path} has only empty assistant messages, so there is nothing to learn; "
                        "fill in the replies")
    record = {"sha256": files.file_sha256(path)}
    if len(kept) < len(conversations):  # the loss covers the replies only: an empty one teaches nothing
        record["without_a_reply"] = len(conversations) - len(kept)
    empty_asks = sum(1 for c in kept if any(m["role"] == "user" and not m["content"].strip() for m in c))
    if empty_asks:
        record["empty_user_messages"] = empty_asks
    return Conversations(kept, shape, str(path), record)


def load_conversations(source: str) -> Conversations:
    """Conversations from a JSONL file or a built-in set (`builtin:chat-skills`)."""
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTIN_CHATS:
            raise UserError(f"unknown built-in chat data {source!r}; built-in chat data: "
                            f"{', '.join('builtin:' + n for n in BUILTIN_CHATS)}")
        conversations = BUILTIN_CHATS[name]()
        digest = hashlib.sha256(json.dumps(conversations).encode("utf-8")).hexdigest()
        return Conversations(conversations, "messages", source, {"sha256": digest, "generated": True})
    if source.startswith("tfds:"):
        raise UserError(f"chat data cannot come from {source}; pass a JSONL file of conversations ({SHAPES_HELP})")
    return read_jsonl(Path(source).expanduser())


def split_conversations(conversations: list, validation_fraction: float, seed: int = 0) -> tuple[list, list]:
    """A seeded shuffle, then the last `validation_fraction` (at least one conversation) for validation."""
    if len(conversations) < 2:
        raise UserError(f"the chat data has {count(len(conversations), 'conversation')}; it needs at least 2, one of them for validation")
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    held = min(len(order) - 1, max(1, round(len(order) * validation_fraction)))
    return [conversations[i] for i in order[:-held]], [conversations[i] for i in order[-held:]]


# --- training rows -----------------------------------------------------------------------------

def exchanges(messages: list[dict]) -> tuple[list[dict], list[list[dict]]]:
    """A conversation as (its system message or [], [exchange, ...]): each exchange is the messages up to and including
    one assistant reply. Messages after the last reply are left out (nothing to learn there)."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    found, pending = [], []
    for message in messages[len(system):]:
        pending.append(message)
        if message["role"] == "assistant":
            found.append(pending)
            pending = []
    return system, found


def conversation_rows(template, tokenizer, messages: list[dict], limit: int, counts: dict) -> list[tuple]:
    """(ids, weights) rows of at most `limit` tokens, cut between exchanges: each row is the system message (when it
    fits) and as many whole consecutive exchanges as fit, encoded by the template as one conversation. An exchange
    longer than `limit` on its own is dropped."""
    system, parts = exchanges(messages)
    rows, current, encoded = [], None, None
    for exchange in parts:
        alone = template.encode(tokenizer, exchange)
        if len(alone[0]) > limit:
            counts["dropped_exchanges"] += 1
            continue
        if current is not None:
            grown = template.encode(tokenizer, current + exchange)
            if len(grown[0]) <= limit:
                current, encoded = current + exchange, grown
                continue
            rows.append(encoded)
        with_system = template.encode(tokenizer, system + exchange) if system else None
        if with_system is not None and len(with_system[0]) <= limit:
            current, encoded = system + exchange, with_system
        else:
            current, encoded = list(exchange), alone
    if current is not None:
        rows.append(encoded)
    counts["cut_conversations"] += len(rows) > 1
    counts["dropped_conversations"] += not rows
    return rows


def chat_rows(template: ChatTemplate, tokenizer, conversations: list, sequence_length: int, pad_id: int = 0):
    """Training rows (rows, sequence_length + 1) int32 ids, padded with `pad_id`, and their weights (float32), with
    counts of how the conversations were cut."""
    limit = sequence_length + 1
    counts = {"conversations": len(conversations), "rows": 0, "cut_conversations": 0, "dropped_exchanges": 0,
              "dropped_conversations": 0, "assistant_tokens": 0, "tokens": 0}
    found = [row for messages in conversations for row in conversation_rows(template, tokenizer, messages, limit, counts)]
    ids = np.full((len(found), limit), pad_id, np.int32)
    weights = np.zeros((len(found), limit), np.float32)
    for i, (row_ids, row_weights) in enumerate(found):
        ids[i, :len(row_ids)], weights[i, :len(row_weights)] = row_ids, row_weights
    counts.update(rows=len(found), assistant_tokens=int(weights[:, 1:].sum()), tokens=int(sum(len(r[0]) for r in found)))
    return ids, weights, counts


# --- built-in chat data (generated; the README's offline tour) ----------------------------------

WORDS = ("keras", "model", "tensor", "layer", "python", "garden", "river", "window", "orange", "silver", "planet", "rocket",
         "pencil", "bridge", "candle", "forest", "marble", "violin", "yellow", "thunder", "castle", "winter", "summer", "lemon")
NAMES = ("Ada", "Alan", "Grace", "Linus", "Guido", "Marie", "Emmy", "Kurt", "Barbara", "Edsger", "Donald", "Frances")


def _skill(rng: random.Random) -> list[tuple[str, str]]:
    """One exchange, or two where the second refers to the first: (user, assistant) pairs."""
    word, name = rng.choice(WORDS), rng.choice(NAMES)
    a_, b_ = rng.randint(0, 20), rng.randint(0, 20)
    kind = rng.randrange(6)
    if kind == 0:
        return [(rng.choice((f"Say hello to {name}.", f"Greet {name}.", f"Please greet {name}.")), f"Hello, {name}!")]
    if kind == 1:
        return [(rng.choice((f"Write {word} in capital letters.", f"Uppercase: {word}", f"Shout the word {word}.")), word.upper())]
    if kind == 2:
        return [(rng.choice((f"Spell {word} backwards.", f"Reverse: {word}", f"What is {word} reversed?")), word[::-1])]
    if kind == 3:
        return [(rng.choice((f"What is {a_} plus {b_}?", f"Add {a_} and {b_}.", f"{a_} + {b_} = ?")), f"{a_} + {b_} = {a_ + b_}.")]
    if kind == 4:
        return [(rng.choice((f"How many letters are in {word}?", f"Count the letters of {word}.")),
                 f"{word} has {len(word)} letters.")]
    return [(rng.choice((f"Write {word} in capital letters.", f"Uppercase: {word}")), word.upper()),
            (rng.choice(("And backwards?", "Now reverse it.")), word[::-1])]


def chat_skills(conversations: int = 4000, seed: int = 0) -> list:
    """Generated conversations of small skills (greeting, capitals, reversing, adding, counting letters), one to three
    exchanges each, some with a system message: data a few-minute CPU run learns from."""
    rng = random.Random(seed)
    found = []
    for _ in range(conversations):
        messages = [{"role": "system", "content": "You answer in one short line."}] if rng.random() < 0.3 else []
        for _ in range(rng.choice((1, 1, 2, 3))):
            for user, assistant in _skill(rng):
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        found.append(messages)
    return found


BUILTIN_CHATS = {"chat-skills": chat_skills}


def fit_history(template: ChatTemplate, tokenizer, messages: list[dict], budget: int) -> tuple[list[dict], int]:
    """The conversation cut to a prompt of at most `budget` tokens: the oldest turns after the system message go first,
    a user message with the replies after it at a time. Returns (messages, how many were dropped); the last user
    message stays even when it alone is longer."""
    system, rest = (messages[:1], messages[1:]) if messages and messages[0]["role"] == "system" else ([], list(messages))
    dropped = 0
    while len(rest) > 1 and len(template.prompt(tokenizer, system + rest)) > budget:
        rest.pop(0)
        dropped += 1
        while len(rest) > 1 and rest[0]["role"] != "user":
            rest.pop(0)
            dropped += 1
    if system and len(template.prompt(tokenizer, system + rest)) > budget:
        system, dropped = [], dropped + 1
    return system + rest, dropped
