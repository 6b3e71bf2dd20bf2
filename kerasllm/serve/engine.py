"""The serving engine: continuous batching over a fixed set of slots, for `kerasllm serve`.

One thread owns the model. Each request takes a free slot: its prompt is read into that slot's row of the key/value
cache (a prefill of one row), then every step decodes one token for every busy slot together, in one batched,
compiled call, each row at its own position (`TransformerCacheDecoder.step_rows`). A request joins as soon as a slot
is free and leaves when it ends (end of text, a stop string, its token limit, or its client going away), between
two steps, without waiting for the others. Requests beyond the free slots wait in a bounded queue; a full queue is
`QueueFull` (the server answers 429).

A row reads only its own cache and the step always has the same shape, so a request decodes the same tokens whether
it runs alone or beside others (greedy answers do not mix).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from kerasllm import generation
from kerasllm.core.errors import UserError

# Lazy imports: Keras and TensorFlow come with the model and its decoder; this module imports neither.

STOP_EVENT = object()
WARM_PROMPT = 256  # prompts up to this many tokens are compiled for at start-up


class QueueFull(Exception):
    """Every slot is busy and the waiting queue is full."""


@dataclass
class Request:
    """One generation: a prompt of token ids and how to sample its continuation.

    `on_text(text, logprobs)` receives new text as it is decoded, with the log-probabilities of the tokens behind it
    when `logprobs` is not None (else []: `Slot.logprob_entry`), `on_done(finish_reason, usage)` once at the end
    ("stop" or "length"; "cancelled"; "error", with usage {"error": what failed}); both are called on the engine's
    thread. `cancel()` ends it at the next step.
    """

    prompt: np.ndarray
    max_tokens: int
    on_text: Callable[[str], None]
    on_done: Callable[[str, dict], None]
    sampling: generation.Sampling = field(default_factory=lambda: generation.Sampling(allow_eos=True))
    cancelled: threading.Event = field(default_factory=threading.Event)
    joined: float | None = None  # time.perf_counter() when it took a slot (`/metrics`' queue time)
    logprobs: int | None = None  # None: none; N: each sampled token's log-probability and the N likeliest beside it

    def cancel(self) -> None:
        self.cancelled.set()


class Slot:
    """A busy slot: its request, the token to feed next and where it goes, and the text so far."""

    def __init__(self, request: Request, tokenizer, engine: "Engine"):
        self.request, self.engine = request, engine
        self.rows = generation.Rows(tokenizer, 1, [s for s in request.sampling.stop if s], lambda _, text: self.send(text))
        self.entries: list[tuple] = []  # the log-probabilities of tokens whose text has not gone out yet
        self.rng = np.random.default_rng(request.sampling.seed)
        self.banned = generation.banned_ids(tokenizer, request.sampling.allow_eos)
        self.history = list(map(int, request.prompt))
        self.generated, self.position, self.next_token = 0, 0, 0

    def sample(self, logits: np.ndarray) -> str | None:
        """Pick the next token from `logits` (vocab,) and stream it; the finish reason ("stop", "length") when the
        request is finished (the engine frees its slot, then calls `finish`), else None."""
        request, options = self.request, self.request.sampling
        token = int(generation.sample_next(logits[None], options.temperature, self.rng, top_k=options.top_k, top_p=options.top_p,
                                           banned=self.banned)[0])
        self.generated += 1
        if options.allow_eos and token == self.engine.eos_id:
            return "stop"
        self.rows.push(0, token)
        if self.rows.done[0]:
            return "stop"
        if request.logprobs is not None:
            self.entries.append(self.logprob_entry(logits, token, request.logprobs))
        if self.generated >= request.max_tokens:
            return "length"
        self.rows.emit(0, False)
        self.history.append(token)
        self.next_token = token
        return None

    @staticmethod
    def logprob_entry(logits: np.ndarray, token: int, top: int) -> tuple:
        """(token, its log-probability, [(token, log-probability) of the `top` likeliest, likeliest first]): the
        model's own distribution (natural log, before temperature, top-k/top-p and banned tokens), as vLLM reports it."""
        table = generation.log_softmax(np.asarray(logits, np.float64))
        return token, float(table[token]), [(int(i), float(table[i])) for i in generation.likeliest(table, top)]

    def send(self, text: str) -> None:
        entries, self.entries = self.entries, []
        self.request.on_text(text, entries)

    def finish(self, reason: str) -> None:
        self.rows.emit(0, True)
        usage = {"prompt_tokens": len(self.request.prompt), "completion_tokens": self.generated,
                 "total_tokens": len(self.request.prompt) + self.generated}
        self.request.on_done(reason, usage)


class Engine:
    """Continuous batching of requests to one causal LM.

    Args:
        decoder: the model's decoder, which steps rows at their own positions: transformer-lm's
            `TransformerCacheDecoder` (every row in one batched call) or a keras-hub preset's `CausalLMDecoder` (one
            call per busy row).
        tokenizer: the run's tokenizer.
        max_batch: slots: requests decoded together.
        max_queue: requests that may wait for a slot; one more is refused (`QueueFull`).
    """

    def __init__(self, decoder, tokenizer, max_batch: int = 8, max_queue: int = 64):
        if decoder is None or not getattr(decoder, "per_row", False):
            raise UserError("this model cannot decode requests side by side (it was saved with keras-hub's layers, before "
                            "kerasllm's own); train it again with this kerasllm to serve it")
        if max_batch < 1 or max_queue < 0:
            raise UserError("--max-batch must be at least 1 and the queue 0 or more")
        self.decoder, self.tokenizer = decoder, tokenizer
        self.context, self.max_batch = decoder.context, max_batch
        self.eos_id = tokenizer.eos_id
        self.waiting: queue.Queue = queue.Queue(maxsize=max_queue + 1)  # +1: a submit that finds it full was one too many
        self.max_queue = max_queue
        self.slots: list[Slot | None] = [None] * max_batch
        self.caches = decoder.slot_caches(max_batch)
        self.steps = 0  # batched steps run (statistics for tests and benchmarks)
        self.busiest = 0  # the most slots busy at once
        self.errors = 0  # steps that failed (their requests ended with an error)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kerasllm-engine", daemon=True)

    # --- the public side -----------------------------------------------------------------
    def start(self) -> "Engine":
        self.warm_up()
        self._thread.start()
        return self

    def warm_up(self) -> None:
        """Compile the batched step (one per window of cache it attends over) and the prefills of prompts up to
        WARM_PROMPT tokens (one per 16-token bucket; one in all for a decoder whose prefill has one shape) before the
        first request, so that no early request waits for a compilation (seconds, once)."""
        for window in getattr(self.decoder, "windows", [1]):  # each length of cache a step may attend over
            ends = np.full(self.max_batch, window - 1, np.int32)  # rows are idle: what this writes, a prefill replaces
            self.decoder.step_rows(self.caches, np.zeros(self.max_batch, np.int32), ends, np.ones(self.max_batch, bool))
        one_shape = getattr(self.decoder, "prefill_has_one_shape", False)
        for length in [16] if one_shape else range(16, min(self.context, WARM_PROMPT) + 16, 16):
            self.decoder.prefill(np.zeros(min(length, self.context), np.int32))

    def submit(self, request: Request) -> None:
        """Queue a request; `QueueFull` when every slot is busy and the queue is full."""
        if request.max_tokens < 1:
            raise UserError(f"max_tokens must be at least 1, not {request.max_tokens}")
        if len(request.prompt) > self.context:
            raise UserError(f"the prompt has {len(request.prompt)} tokens, more than the model's context of {self.context}")
        with self._lock:
            if self.waiting.qsize() >= self.max_queue and all(slot is not None for slot in self.slots):
                raise QueueFull(f"all {self.max_batch} slots are busy and {self.max_queue} requests are waiting")
            self.waiting.put(request)

    def cancel_all(self) -> None:
        """End every open request, running or waiting, at the next step (a drain that ran out of time): each is told
        "cancelled", so its answer ends as usual instead of being cut."""
        for slot in list(self.slots):
            if slot is not None:
                slot.request.cancel()
        with self.waiting.mutex:
            waiting = list(self.waiting.queue)
        for request in waiting:
            if isinstance(request, Request):
                request.cancel()

    def stop(self) -> None:
        self._stopped.set()
        self.waiting.put(STOP_EVENT)
        self._thread.join(timeout=10)

    @property
    def busy(self) -> int:
        return sum(slot is not None for slot in self.slots)

    # --- the engine's thread ---------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._admit(block=self.busy == 0)
                self._drop_cancelled()
                if self.busy:
                    self._reseed_full()
                    self._step()
            except Exception as error:  # noqa: BLE001 (the model failed: its requests end with the reason; the engine goes on)
                self._fail_all(f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}")

    def _fail_all(self, reason: str) -> None:
        """End every running request with an error (their clients hear of it) and start again from empty slots."""
        self.errors += 1
        ended, self.slots = [slot for slot in self.slots if slot is not None], [None] * self.max_batch
        self.caches = self.decoder.slot_caches(self.max_batch)
        for slot in ended:
            slot.request.on_done("error", {"error": reason})

    def _admit(self, block: bool) -> None:
        """Requests into free slots; waits for one when nothing is running."""
        while any(slot is None for slot in self.slots):
            try:
                request = self.waiting.get(timeout=0.5) if block else self.waiting.get_nowait()
            except queue.Empty:
                return
            block = False
            if request is STOP_EVENT:
                return
            if request.cancelled.is_set():
                request.on_done("cancelled", {})
                continue
            self._join(self.slots.index(None), request)

    def _join(self, row: int, request: Request) -> None:
        request.joined = time.perf_counter()
        slot = Slot(request, self.tokenizer, self)
        logits, row_caches = self.decoder.prefill(request.prompt)
        self.caches = self.decoder.put(self.caches, row, row_caches)
        slot.position = min(len(request.prompt), self.context)
        self.slots[row] = slot  # busy from its first token on
        self.busiest = max(self.busiest, self.busy)
        self._end_if(row, slot.sample(logits))

    def _end_if(self, row: int, reason: str | None) -> None:
        """Free slot `row` when its request has ended, then tell its client: a client that has its answer finds the
        slot free already."""
        if reason is not None:
            slot, self.slots[row] = self.slots[row], None
            slot.finish(reason)

    def _drop_cancelled(self) -> None:
        for row, slot in enumerate(self.slots):
            if slot is not None and slot.request.cancelled.is_set():
                self._end_if(row, "cancelled")

    def _reseed_full(self) -> None:
        """A slot whose context is full starts again from the last half of its text (a sliding window)."""
        for row, slot in enumerate(self.slots):
            if slot is not None and slot.position >= self.context:
                keep = slot.history[-(self.context // 2):]
                logits, row_caches = self.decoder.prefill(np.asarray(keep[:-1] or keep, np.int32))
                self.caches = self.decoder.put(self.caches, row, row_caches)
                slot.position = len(keep) - 1 if len(keep) > 1 else len(keep)

    def _step(self) -> None:
        tokens = np.zeros(self.max_batch, np.int32)
        positions = np.zeros(self.max_batch, np.int32)
        busy = np.zeros(self.max_batch, bool)
        for row, slot in enumerate(self.slots):
            if slot is not None:
                tokens[row], positions[row], busy[row] = slot.next_token, slot.position, True
        logits, self.caches = self.decoder.step_rows(self.caches, tokens, positions, busy)
        self.steps += 1
        for row, slot in enumerate(self.slots):
            if slot is None:
                continue
            slot.position += 1
            self._end_if(row, slot.sample(logits[row]))
