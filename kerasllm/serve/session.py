"""A chat session for `kerasllm chat`: the history, the slash commands and saving, apart from the terminal.

Commands: `/reset` (forget the conversation, keep the system message), `/system TEXT` (set it; `/system` alone
clears it), `/save FILE` (append the conversation to FILE as one JSONL line of OpenAI `messages`, the shape
`--task chat` trains on), `/help`. A reply interrupted with Ctrl-C stays in the history as far as it got.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from pathlib import Path
from typing import Callable

from kerasllm.core.errors import UserError
from kerasllm.core.words import count

HELP = ("/reset forgets the conversation · /system TEXT sets the system message (/system alone clears it) · "
        "/save FILE appends the conversation to FILE (JSONL messages) · /help · Ctrl-C stops an answer · Ctrl-D leaves")


class ChatSession:
    """The messages of one conversation and what the commands do to them.

    Args:
        reply: `reply(messages, on_text, on_note) -> str`, the assistant's next message after `messages`.
        system: the system message to start with (None: none).
    """

    def __init__(self, reply: Callable, system: str | None = None):
        self.reply, self.system = reply, system
        self.messages: list[dict] = []
        self.noted: set[str] = set()  # notes said once per conversation (that it outgrew the context, say)

    @property
    def conversation(self) -> list[dict]:
        """The messages with the system message first, as the model reads them."""
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.messages

    def command(self, line: str) -> str | None:
        """What a slash command says back, or None when `line` is a message for the model."""
        if not line.startswith("/"):
            return None
        name, _, argument = line.partition(" ")
        argument = argument.strip()
        if name == "/reset":
            dropped = len(self.messages)
            self.messages, self.noted = [], set()
            return f"conversation reset ({count(dropped, 'message')} forgotten)"
        if name == "/system":
            self.system = argument or None
            return f"system message set: {argument}" if argument else "system message cleared"
        if name == "/save":
            if not argument:
                return "usage: /save FILE"
            return self.save(Path(argument).expanduser())
        if name == "/help":
            return HELP
        return f"unknown command {name}; {HELP}"

    def save(self, path: Path) -> str:
        if path.is_dir():
            return f"{path} is a folder; name a file, e.g. /save {path / 'chat.jsonl'}"
        if not self.messages:
            return "nothing to save yet"
        existed = path.exists()
        try:
            with open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps({"messages": self.conversation}, ensure_ascii=False) + "\n")
        except OSError as error:
            return f"cannot write {path} ({error.strerror})"
        return f"{'appended to' if existed else 'saved to'} {path} ({count(len(self.conversation), 'message')})"

    def ask(self, text: str, on_text: Callable[[str], None], on_note: Callable[[str], None] | None = None) -> str:
        """Send a user message; the reply streams through `on_text` and joins the history. On Ctrl-C the reply so far
        joins it, and KeyboardInterrupt goes on to the caller."""
        if not text.strip():
            raise UserError("an empty message; type something, or /help")
        self.messages.append({"role": "user", "content": text})
        parts: list[str] = []

        def stream(piece: str) -> None:
            on_text(piece)  # first: a piece that stops the reply (Ctrl-C) was not shown, so it is not kept
            parts.append(piece)

        def note_once(line: str) -> None:  # the context note, once: the conversation only grows after it
            kind = line.split(";")[0]
            if on_note and kind not in self.noted:
                self.noted.add(kind)
                on_note(line)

        try:
            self.reply(self.conversation, stream, note_once)
        finally:
            self.messages.append({"role": "assistant", "content": "".join(parts)})
        return "".join(parts)


def talk(session: ChatSession, write: Callable, say: Callable, note: Callable, read: Callable = input) -> None:
    """The terminal loop of `kerasllm chat`: read a line (`read`, the prompt "you> "), answer a command with `say`,
    stream a reply with `write` ("bot> " first). Ctrl-C at the prompt gives a fresh line, during a reply stops it
    (the session goes on); Ctrl-D (end of input) leaves."""
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:  # Ctrl-D
            write("\n")
            return
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line, the session goes on
            write("\n")
            continue
        if not line:
            continue
        said = session.command(line)
        if said is not None:
            say(said)
            continue
        reply(session, line, write, note)


def reply(session: ChatSession, line: str, write: Callable, note: Callable) -> None:
    """One turn: "bot> " with the reply's first text (a note goes before it, not inside it), " [stopped]" on Ctrl-C.

    While the reply is written, Ctrl-C only marks it stopped, and the reply stops at its next piece of text: a
    KeyboardInterrupt raised wherever the signal happened to land (inside TensorFlow's or Keras' Python code, which
    may catch it) was once lost, and the reply ran on (#33)."""
    started, stopped = [], threading.Event()

    def show(piece: str) -> None:
        if not started:
            write("bot> ")
            started.append(piece)
        write(piece)

    def reply_text(piece: str) -> None:
        if stopped.is_set():
            raise KeyboardInterrupt
        show(piece)

    try:
        with stop_on_sigint(stopped):
            session.ask(line, reply_text, note)
    except KeyboardInterrupt:
        show(" [stopped]")
    if not started:
        write("bot> ")
    write("\n")


@contextlib.contextmanager
def stop_on_sigint(stopped: threading.Event):
    """Inside the block (main thread only), SIGINT sets `stopped` instead of raising; the previous handler comes back
    after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stopped.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
