"""Chat templates: how a conversation's messages become token ids.

Two kinds, both saved as `chat_template.json` beside a chat run's tokenizer and read back by `ChatTemplate.load`:

* `ChatTemplate` (kind `kerasllm`), the zoo's: one special token before each message's text and `[EOS]` after it,
  placed by id, so no text a user types can turn into one:

      [SYSTEM] You are brief. [EOS] [USER] Hi! [EOS] [ASSISTANT] Hello. [EOS]

* `PresetTemplate`, a keras-hub preset family's own (Gemma, Llama 3, ChatML), as its model card writes it
  (`PRESET_TEMPLATES`), chosen from the preset's tokenizer (`PresetTemplate.for_tokenizer`).

Each gives `encode` (ids and a weight per id: 1 for the assistant's tokens, what training predicts) and `prompt` (the
ids a reply is generated after). Reading conversations and making training rows is `kerasllm.data.chat`'s.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from kerasllm.core import files
from kerasllm.core.errors import UserError

ROLES = ("system", "user", "assistant")
CHAT_SPECIALS = ("[SYSTEM]", "[USER]", "[ASSISTANT]")
TEMPLATE_FILE = files.CHAT_TEMPLATE_FILE
TEMPLATE_VERSION = 1


# --- kerasllm's template ------------------------------------------------------------------------------

@dataclass
class ChatTemplate:
    """How messages become token ids: kerasllm's own role tokens (`kind="kerasllm"`), placed by id.

    Args:
        kind: the template's name (kept in `chat_template.json` with the run's tokenizer).
        role_tokens: role → the special token that starts a message of that role.
        end_token: the special token that ends each message (a reply ends when it is generated).
    """

    kind: str = "kerasllm"
    role_tokens: dict = field(default_factory=lambda: dict(zip(ROLES, CHAT_SPECIALS)))
    end_token: str = "[EOS]"

    @property
    def specials(self) -> tuple[str, ...]:
        return tuple(self.role_tokens.values())

    def _id(self, tokenizer, token: str) -> int:
        found = tokenizer.special_id(token.strip("[]").lower())
        if found is None:
            raise UserError(f"the tokenizer has no {token} token, which the chat template needs; fine-tune with --task chat, "
                            "which adds it")
        return found

    def message_ids(self, tokenizer, message: dict) -> np.ndarray:
        """One message: its role token, its text, the end token."""
        body = tokenizer.encode(message["content"]) if message["content"] else np.zeros(0, np.int32)
        return np.concatenate([[self._id(tokenizer, self.role_tokens[message["role"]])], body,
                               [self._id(tokenizer, self.end_token)]]).astype(np.int32)

    def encode(self, tokenizer, messages: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """Ids of a whole conversation, and a weight per id: 1 for an assistant's text and its end token (what
        training predicts), 0 for role tokens and for system and user messages."""
        ids, weights = [], []
        for message in messages:
            part = self.message_ids(tokenizer, message)
            ids.append(part)
            weight = np.zeros(len(part), np.float32)
            if message["role"] == "assistant":
                weight[1:] = 1.0
            weights.append(weight)
        return np.concatenate(ids), np.concatenate(weights)

    def prompt(self, tokenizer, messages: list[dict]) -> np.ndarray:
        """The ids a reply is generated after: the conversation so far, then the assistant's role token."""
        parts = [self.message_ids(tokenizer, message) for message in messages]
        return np.concatenate([*parts, [self._id(tokenizer, self.role_tokens["assistant"])]]).astype(np.int32)

    def to_dict(self) -> dict:
        return {"format_version": TEMPLATE_VERSION, "kind": self.kind, "role_tokens": self.role_tokens, "end_token": self.end_token}

    def save(self, folder: Path) -> Path:
        path = Path(folder) / TEMPLATE_FILE
        files.write_text_atomic(path, json.dumps(self.to_dict(), indent=2))
        return path

    def bind(self, tokenizer):
        """The tokenizer replies are written with: [EOS] ends a reply, as it ends the tokenizer's text."""
        return tokenizer

    @staticmethod
    def load(folder: Path) -> "ChatTemplate | PresetTemplate":
        """The template saved in a chat run (kerasllm's own, or a keras-hub preset's)."""
        path = Path(folder) / TEMPLATE_FILE
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("format_version", 0) > TEMPLATE_VERSION:
                raise ValueError("written by a newer kerasllm; upgrade kerasllm")
            if "roles" in saved:
                return PresetTemplate(saved["kind"], {role: tuple(parts) for role, parts in saved["roles"].items()},
                                      saved["begin"], saved["stop"], saved["system"])
            return ChatTemplate(saved["kind"], dict(saved["role_tokens"]), saved["end_token"])
        except FileNotFoundError as error:
            raise UserError(f"{path} is missing; a chat run keeps its template there: restore the run folder") from error
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(f"{path} is corrupt ({error}); restore the run folder") from error


# The templates of keras-hub presets' model families, as their model cards give them: role → (text before a message,
# text after it); special tokens are written as they are spelled in the preset's vocabulary. `system`: "role" where
# the family has a system role, "first-user" where the system message opens the first user message (Gemma).
PRESET_TEMPLATES = {
    "gemma": {"begin": "<bos>", "stop": "<end_of_turn>", "system": "first-user",
              "roles": {"user": ("<start_of_turn>user\n", "<end_of_turn>\n"),
                        "assistant": ("<start_of_turn>model\n", "<end_of_turn>\n")}},
    "llama3": {"begin": "<|begin_of_text|>", "stop": "<|eot_id|>", "system": "role",
               "roles": {role: (f"<|start_header_id|>{role}<|end_header_id|>\n\n", "<|eot_id|>") for role in ROLES}},
    "chatml": {"begin": "", "stop": "<|im_end|>", "system": "role",
               "roles": {role: (f"<|im_start|>{role}\n", "<|im_end|>\n") for role in ROLES}},
}
# which family's template a preset's tokenizer takes (by its class), when its vocabulary has the template's tokens
TEMPLATE_OF_TOKENIZER = {"Gemma": "gemma", "Llama3": "llama3", "Qwen": "chatml", "SmolLM": "chatml"}


@dataclass
class PresetTemplate:
    """A keras-hub preset's chat template: its family's own (Gemma, Llama 3, ChatML) or, for a preset without one
    (GPT-2, OPT, …), a plain one: `User: …` and `Assistant: …` lines, each reply ending with the tokenizer's end token.

    Special tokens are placed by id (a user who types `<|eot_id|>` gets the text, not the token); the text between
    them is encoded by the preset's tokenizer. A reply is generated after the assistant's header and ends at `stop`.

    Args:
        kind: the template's name (gemma, llama3, chatml, plain).
        roles: role → (text before a message, text after it).
        begin: text at the start of a conversation (the start token).
        stop: the special token that ends a reply.
        system: "role" (a system message of its own) or "first-user" (it opens the first user message).
    """

    kind: str
    roles: dict
    begin: str
    stop: str
    system: str = "role"
    specials: ClassVar[tuple] = ()  # tokens the template adds to the tokenizer: none, they are the preset's

    @staticmethod
    def for_tokenizer(tokenizer) -> "PresetTemplate":
        """The template of the preset a `HubTokenizer` comes from: its family's where the vocabulary has that template's
        tokens, else the plain one."""
        name = type(tokenizer.tokenizer).__name__
        family = next((kind for prefix, kind in TEMPLATE_OF_TOKENIZER.items() if name.startswith(prefix)), None)
        if family is not None:
            found = PRESET_TEMPLATES[family]
            template = PresetTemplate(family, dict(found["roles"]), found["begin"], found["stop"], found["system"])
            if all(tokenizer.token_id(token) is not None for token in template.special_texts()):
                return template
        end = tokenizer.eos_id
        if end is None:
            raise UserError(f"the preset's tokenizer ({name}) has no end token, so a reply could not end; fine-tune a preset "
                            "whose tokenizer has one")
        end_text = tokenizer.token_text(end)
        return PresetTemplate("plain", {"system": ("", "\n\n"), "user": ("User: ", "\n"), "assistant": ("Assistant: ", end_text + "\n")},
                              "", end_text, "role")

    def special_texts(self) -> list[str]:
        """The special tokens the template writes (longest first, so that a split finds the longest)."""
        found = {self.stop} | ({self.begin} if self.begin else set())
        found |= {token for parts in self.roles.values() for part in parts for token in re.findall(r"<[^<>\s]+>", part)}
        return sorted(found, key=len, reverse=True)

    def _ids(self, tokenizer, text: str) -> np.ndarray:
        """Template text: its special tokens by id, the text between them through the tokenizer."""
        if not text:
            return np.zeros(0, np.int32)
        specials = [token for token in self.special_texts() if tokenizer.token_id(token) is not None]
        pieces = re.split("(" + "|".join(map(re.escape, specials)) + ")", text) if specials else [text]
        ids = [[tokenizer.token_id(piece)] if piece in specials else tokenizer.encode(piece) for piece in pieces if piece]
        return np.concatenate([np.asarray(part, np.int32) for part in ids]) if ids else np.zeros(0, np.int32)

    def _messages(self, messages: list[dict]) -> list[dict]:
        if self.system == "first-user" and messages and messages[0]["role"] == "system":
            system, rest = messages[0]["content"], messages[1:]
            if rest and rest[0]["role"] == "user":
                return [{"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]
            return [{"role": "user", "content": system}, *rest]
        return messages

    def encode(self, tokenizer, messages: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """Ids of a conversation (after the start text) and a weight per id: 1 for an assistant's text and the end of
        its message, 0 for headers and for system and user messages."""
        ids = [self._ids(tokenizer, self.begin)]
        weights = [np.zeros(len(ids[0]), np.float32)]
        for message in self._messages(messages):
            before, after = self.roles[message["role"]]
            head = self._ids(tokenizer, before)
            text = tokenizer.encode_literally(message["content"], self.special_texts()) if message["content"] else np.zeros(0, np.int32)
            body = np.concatenate([text, self._ids(tokenizer, after)]).astype(np.int32)
            ids += [head, body]
            weights += [np.zeros(len(head), np.float32), np.full(len(body), float(message["role"] == "assistant"), np.float32)]
        return np.concatenate(ids).astype(np.int32), np.concatenate(weights)

    def prompt(self, tokenizer, messages: list[dict]) -> np.ndarray:
        """The ids a reply is generated after: the conversation so far, then the assistant's header."""
        ids, _ = self.encode(tokenizer, messages)
        return np.concatenate([ids, self._ids(tokenizer, self.roles["assistant"][0])]).astype(np.int32)

    def bind(self, tokenizer):
        """The tokenizer replies are written with: the template's stop token ends a reply."""
        tokenizer.end_id = tokenizer.token_id(self.stop)
        return tokenizer

    def to_dict(self) -> dict:
        return {"format_version": TEMPLATE_VERSION, "kind": self.kind, "roles": {role: list(parts) for role, parts in self.roles.items()},
                "begin": self.begin, "stop": self.stop, "system": self.system}

    def save(self, folder: Path) -> Path:
        path = Path(folder) / TEMPLATE_FILE
        files.write_text_atomic(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False))
        return path
