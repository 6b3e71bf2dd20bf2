"""Decoding for language models: a decoder interface and sampling on logits.

A model family may supply a fast decoder (`ModelSpec.decoder(model) -> Decoder`):
`start(prompts) -> (logits, state)` reads the prompts, `step(state, tokens) ->
(logits, state)` advances every row by one token. `lstm-textgen` carries the LSTM's
(h, c), so a token costs the same however long the context. Models without one use
`WindowedDecoder`, which re-feeds the last `window` tokens through the whole model.

Sampling works on logits (batch, vocab): greedy (temperature 0), temperature, top-k,
top-p (nucleus), a seed, a batch of prompts, stop strings and a maximum length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from kerasllm.core.errors import UserError

# Lazy imports: Keras and TensorFlow are imported inside functions: `kerasllm --help` and `kerasllm list` load this
# module and must not load them.


class Decoder(Protocol):
    """What a model family supplies to generate at its own speed."""

    def start(self, prompts: list[np.ndarray]) -> tuple[np.ndarray, object]:
        """Read each prompt (1-D id arrays, any lengths); logits (batch, vocab) for each prompt's next token."""

    def step(self, state, tokens: np.ndarray) -> tuple[np.ndarray, object]:
        """Append `tokens` (batch,) to every row; logits (batch, vocab) for the token after."""

    def select(self, state, rows: np.ndarray) -> object:
        """The state of rows `rows` (repeats allowed), in that order: beam search reorders beams with it."""


def as_logits(outputs: np.ndarray, output: str) -> np.ndarray:
    """Model outputs → logits; probability outputs become log-probabilities (same distribution)."""
    outputs = np.asarray(outputs, dtype=np.float64)
    return np.log(np.maximum(outputs, 1e-30)) if output == "probabilities" else outputs


class WindowedDecoder:
    """The fallback: re-run the model on the last `window` tokens of each row for every new token.

    Args:
        model: maps ids (batch, time) to (batch, time, vocab) logits or probabilities.
        window: most tokens fed at once (the training window).
        output: `logits` or `probabilities` (what the model returns).
    """

    def __init__(self, model, window: int, output: str = "logits"):
        self.window, self.output = window, output
        self.forward = forward_function(model)

    def _logits(self, rows: list[list[int]]) -> np.ndarray:
        last = [self.forward(np.asarray([row[-self.window:]], dtype=np.int32))[0, -1] for row in rows]
        return as_logits(np.stack(last), self.output)

    def start(self, prompts):
        rows = [list(map(int, prompt)) for prompt in prompts]
        return self._logits(rows), rows

    def step(self, state, tokens):
        for row, token in zip(state, tokens):
            row.append(int(token))
        return self._logits(state), state

    def select(self, state, rows):
        return [list(state[int(row)]) for row in rows]


def forward_function(model) -> Callable[[np.ndarray], np.ndarray]:
    """`ids (1, time) -> outputs (1, time, vocab)`, traced once for every length."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        traced = tf.function(lambda ids: model(ids, training=False), input_signature=[tf.TensorSpec([1, None], tf.int32)])
        return lambda ids: traced(ids).numpy()
    return lambda ids: keras.ops.convert_to_numpy(model(ids, training=False))


# --- sampling ---------------------------------------------------------------------------

# Ceilings checked before any work: beam search gains nothing past a few dozen beams while its memory grows with
# beams × length (--beam 100000 grew to 3.9 GB), and the text and its decoding history grow with every new token.
MAX_BEAM = 256
MAX_NEW_TOKENS = 100_000


def check_options(temperature: float, top_k: int, top_p: float, max_length: int, beam_width: int = 0) -> None:
    if beam_width < 0:
        raise UserError("--beam must be 0 (sampling) or a beam width of 1 or more")
    if beam_width > MAX_BEAM:
        raise UserError(f"--beam {beam_width} is more than {MAX_BEAM} beams, past which beam search finds nothing better "
                        "and its memory grows with every beam; use a width of 4 to 16")
    if max_length > MAX_NEW_TOKENS:
        raise UserError(f"--max-length {max_length} is more than {MAX_NEW_TOKENS:,} new tokens; generate in parts")
    if not math.isfinite(temperature) or temperature < 0:
        raise UserError("--temperature must be 0 (greedy) or a positive number")
    if top_k < 0:
        raise UserError("--top-k must be 0 (off) or more")
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise UserError("--top-p must be in (0, 1]; 1 means off")
    if max_length < 0:
        raise UserError("--max-length must be 0 or more")


def check_beam_fits(beam_width: int, vocab_size: int, top_k: int = 0) -> None:
    """More beams than the model has tokens cannot be filled at the first step; a top-k past them keeps nothing out."""
    if beam_width > vocab_size:
        raise UserError(f"--beam {beam_width} is more beams than the model has tokens ({vocab_size}); use at most {vocab_size}")
    if top_k > vocab_size:
        raise UserError(f"--top-k {top_k} is more than the model's {vocab_size} tokens, so it would keep them all; use at most "
                        f"{vocab_size}, or 0 for no top-k")


def filter_logits(logits: np.ndarray, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """Logits (batch, vocab) with everything outside the top-k / top-p set at -inf."""
    logits = np.array(logits, dtype=np.float64)
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = np.partition(logits, -top_k, axis=-1)[:, -top_k][:, None]
        logits[logits < kth] = -np.inf
    if top_p < 1.0:
        order = np.argsort(-logits, axis=-1)
        sorted_logits = np.take_along_axis(logits, order, axis=-1)
        probabilities = np.exp(sorted_logits - sorted_logits[:, :1])
        probabilities /= probabilities.sum(axis=-1, keepdims=True)
        before = np.cumsum(probabilities, axis=-1) - probabilities  # mass of the tokens ranked above
        drop = before >= top_p  # keep the smallest set whose mass reaches top_p (always >= 1 token)
        np.put_along_axis(logits, order, np.where(drop, -np.inf, sorted_logits), axis=-1)
    return logits


def sample_next(logits: np.ndarray, temperature: float, rng: np.random.Generator, *, top_k: int = 0,
                top_p: float = 1.0, banned: list[int] = ()) -> np.ndarray:
    """Next ids (batch,) from logits (batch, vocab); `banned` ids are never chosen. Temperature 0 is greedy."""
    logits = np.array(logits, dtype=np.float64)
    if banned:
        logits[:, list(banned)] = -np.inf
    if temperature <= 0:
        return np.argmax(logits, axis=-1)
    weights = distribution(logits, temperature, top_k=top_k, top_p=top_p)
    return np.array([rng.choice(len(row), p=row) for row in weights])


def distribution(logits: np.ndarray, temperature: float, *, top_k: int = 0, top_p: float = 1.0, banned: list[int] = ()) -> np.ndarray:
    """The probabilities (batch, vocab) `sample_next` draws from at `temperature` > 0: the logits scaled, `banned` ids
    and what top-k / top-p leave out at 0."""
    logits = np.array(logits, dtype=np.float64)
    if banned:
        logits[:, list(banned)] = -np.inf
    logits = filter_logits(logits / temperature, top_k, top_p)
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return weights / weights.sum(axis=-1, keepdims=True)


def likeliest(row: np.ndarray, count: int) -> np.ndarray:
    """The ids of the `count` highest values of one row of scores, highest first, without sorting the whole row."""
    count = min(count, len(row))
    if count <= 0:
        return np.zeros(0, int)
    best = np.argpartition(-row, count - 1)[:count]
    return best[np.argsort(-row[best])]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def beam_search(decoder: Decoder, prompt: np.ndarray, max_length: int, beam_width: int, *, banned: list[int] = (),
                eos: int | None = None, length_penalty: float = 1.0) -> list[int]:
    """The most likely continuation of one prompt under beam search (token ids); see `beam_search_batch`."""
    return beam_search_batch(decoder, [prompt], max_length, beam_width, banned=banned, eos=eos, length_penalty=length_penalty)[0]


def beam_search_batch(decoder: Decoder, prompts: list, max_length: int, beam_width: int, *, banned: list[int] = (),
                      eos: int | None = None, length_penalty: float = 1.0) -> list[list[int]]:
    """Beam search for several prompts at once: the live beams of every prompt run as one decoder batch.

    For each prompt, keeps the `beam_width` best partial continuations by total log-probability; a beam that
    produces `eos` is finished. Finished beams are ranked by score / length ** length_penalty. Beam width 1 is
    greedy decoding. The decoder's batch after the first step is padded to prompts × beam_width rows (repeating a
    live row), so a traced step sees one shape however many beams have finished.
    """
    logits, state = decoder.start(list(prompts))
    count, width = len(prompts), len(prompts) * beam_width
    owner, beams, scores = np.arange(count), [[] for _ in prompts], np.zeros(count)
    finished: list[list] = [[] for _ in prompts]
    for position in range(max_length):
        log_probs = log_softmax(np.array(logits, dtype=np.float64)[: len(owner)])
        if banned:
            log_probs[:, list(banned)] = -np.inf
        rows, tokens, kept_owner, kept_beams, kept_scores = [], [], [], [], []
        for source in range(count):
            live = np.flatnonzero(owner == source)
            if not len(live):
                continue
            total = (scores[live, None] + log_probs[live]).reshape(-1)
            best = np.argsort(-total, kind="stable")[:beam_width]
            for row, token, score in zip(live[best // log_probs.shape[-1]], best % log_probs.shape[-1], total[best]):
                if eos is not None and token == eos:
                    finished[source].append((score / max(len(beams[row]), 1) ** length_penalty, beams[row]))
                else:
                    rows.append(row), tokens.append(int(token)), kept_scores.append(score)
                    kept_owner.append(source), kept_beams.append(beams[row] + [int(token)])
        beams, scores, owner = kept_beams, np.asarray(kept_scores), np.asarray(kept_owner, dtype=int)
        if not rows or position == max_length - 1:
            break
        padding = width - len(rows)
        state = decoder.select(state, np.asarray(rows + rows[:1] * padding))
        logits, state = decoder.step(state, np.asarray(tokens + tokens[:1] * padding))
    for beam, score, source in zip(beams, scores, owner):
        finished[source].append((score / max(len(beam), 1) ** length_penalty, beam))
    return [max(found, key=lambda item: item[0])[1] if found else [] for found in finished]


# --- the loop ---------------------------------------------------------------------------

def stop_index(text: str, stop: list[str]) -> int:
    """Where the first stop string starts in `text`, or -1."""
    return min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)


def make_decoder(model, spec=None, window: int = 100) -> Decoder:
    """The family's own decoder when it has one that fits `model`, else the windowed fallback."""
    if spec is not None and spec.decoder is not None:
        decoder = spec.decoder(model)
        if decoder is not None:
            return decoder
    return WindowedDecoder(model, window, spec.output if spec is not None else "logits")


def encode_prompt(tokenizer, prompt: str) -> np.ndarray:
    ids = tokenizer.encode(prompt)
    if len(ids):
        return ids
    newline = tokenizer.encode("\n")  # an empty prompt starts as if after a line break
    return newline[-1:] if len(newline) and newline[-1] != tokenizer.unk_id else np.asarray([tokenizer.unk_id + 1], np.int32)


def banned_ids(tokenizer, allow_eos: bool) -> list[int]:
    """Ids a sampler never picks: the special tokens, and [EOS] too unless a row may end there."""
    return tokenizer.never_generated() + ([tokenizer.eos_id] if not allow_eos and tokenizer.eos_id is not None else [])


@dataclass(frozen=True)
class Sampling:
    """How `generate` picks each next token.

    Args:
        temperature: softmax temperature; 0 is greedy.
        top_k: sample only from the k most likely tokens (0: all).
        top_p: sample only from the most likely tokens whose probabilities add up to p (1: all).
        seed: the sampler's random seed (the same seed gives the same text).
        stop: strings that end a row (not included in its text).
        allow_eos: a row may end at [EOS] (models trained on documents that end with it).
        beam_width: >= 1 decodes each prompt by beam search (temperature, top-k and top-p then do not apply).
        length_penalty: beam search's length normalisation exponent.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple = ()
    allow_eos: bool = False
    beam_width: int = 0
    length_penalty: float = 1.0


REPLACEMENT = "\N{REPLACEMENT CHARACTER}"


class StreamDecoder:
    """Turns ids into text as they come: `push(id) -> new text` (whole characters only)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.emitted = tokenizer, [], ""

    def push(self, token_id: int) -> str:
        if self.tokenizer.tokens_stand_alone:
            return self.tokenizer.token(int(token_id))
        self.ids.append(int(token_id))
        text = self.tokenizer.decode(self.ids)
        if text.endswith(REPLACEMENT) and not self.ids[-1] == self.tokenizer.unk_id:
            return ""  # an unfinished UTF-8 byte sequence: wait for the rest
        new, self.emitted = text[len(self.emitted):], text
        return new


class Rows:
    """The text of each row as tokens arrive: decoded incrementally, cut at a stop string, streamed to `on_text`
    (text that could still be the start of a stop string is held back)."""

    def __init__(self, tokenizer, count: int, stop: list[str], on_text: Callable[[int, str], None] | None):
        self.streams = [StreamDecoder(tokenizer) for _ in range(count)]
        self.texts, self.emitted, self.done = [""] * count, [0] * count, [False] * count
        self.stop, self.on_text = stop, on_text
        self.hold = max((len(s) for s in stop), default=1) - 1

    def push(self, row: int, token: int) -> None:
        """Add one token to `row`; the row is done once a stop string appears."""
        self.texts[row] += self.streams[row].push(int(token))
        cut = stop_index(self.texts[row], self.stop)
        if cut >= 0:
            self.texts[row], self.done[row] = self.texts[row][:cut], True

    def set(self, row: int, ids) -> None:
        """`row`'s whole text at once (beam search), cut at a stop string."""
        for token in ids:
            self.texts[row] += self.streams[row].push(int(token))
        cut = stop_index(self.texts[row], self.stop)
        self.texts[row] = self.texts[row] if cut < 0 else self.texts[row][:cut]
        self.done[row] = True

    def emit(self, row: int, final: bool) -> None:
        end = len(self.texts[row]) if final else max(self.emitted[row], len(self.texts[row]) - self.hold)
        if self.on_text and end > self.emitted[row]:
            self.on_text(row, self.texts[row][self.emitted[row]:end])
        self.emitted[row] = end


def generate(model, tokenizer, prompts: list[str], max_length: int, *, decoder: Decoder | None = None, spec=None,
             window: int = 100, on_text: Callable[[int, str], None] | None = None, **sampling) -> list[str]:
    """Continue each prompt by up to `max_length` tokens; return the continuations.

    `sampling` are `Sampling`'s fields (temperature, top_k, top_p, seed, stop, allow_eos, beam_width, length_penalty).
    A row ends early at the first stop string (which is not included), or at [EOS] when `allow_eos` (models trained
    on documents that end with [EOS]; the LMs trained on running text never saw it, so it is not sampled for them).
    With `beam_width` >= 1 each prompt is decoded by beam search and its text arrives in one piece. `on_text(row, text)`
    receives each row's new text as it is produced (held back while it could still be the start of a stop string).
    """
    return generate_ids(model, tokenizer, [encode_prompt(tokenizer, p) for p in prompts], max_length, decoder=decoder, spec=spec,
                        window=window, on_text=on_text, **sampling)


def generate_ids(model, tokenizer, prompts: list, max_length: int, *, decoder: Decoder | None = None, spec=None,
                 window: int = 100, on_text: Callable[[int, str], None] | None = None, **sampling) -> list[str]:
    """`generate` from prompts that are token ids already (a chat template's, with its special tokens)."""
    options = Sampling(**sampling)
    check_options(options.temperature, options.top_k, options.top_p, max_length, options.beam_width)
    rows = Rows(tokenizer, len(prompts), [s for s in options.stop if s], on_text)
    if max_length == 0:
        return rows.texts
    decoder = decoder or make_decoder(model, spec, window)
    eos = tokenizer.eos_id if options.allow_eos else None
    banned = banned_ids(tokenizer, options.allow_eos)
    if options.beam_width >= 1:
        for row, prompt in enumerate(prompts):
            rows.set(row, beam_search(decoder, prompt, max_length, options.beam_width, banned=banned,
                                      eos=eos, length_penalty=options.length_penalty))
            rows.emit(row, True)
        return rows.texts
    _sample(decoder, list(prompts), rows, max_length, options, banned, eos)
    return rows.texts


def _sample(decoder: Decoder, prompts: list, rows: Rows, max_length: int, options: Sampling, banned: list[int], eos) -> None:
    """The sampling loop: one batched decoder step per position until every row is done or `max_length` is reached."""
    rng = np.random.default_rng(options.seed)
    logits, state = decoder.start(prompts)
    for position in range(max_length):
        last = position == max_length - 1
        tokens = sample_next(logits, options.temperature, rng, top_k=options.top_k, top_p=options.top_p, banned=banned)
        for row, token in enumerate(tokens):
            if rows.done[row]:
                continue
            if eos is not None and token == eos:
                rows.done[row] = True
            else:
                rows.push(row, token)
            rows.emit(row, rows.done[row] or last)
        if all(rows.done) or last:
            break
        logits, state = decoder.step(state, tokens)
    for row in range(len(prompts)):
        rows.emit(row, True)


def write_generations(generate: Callable[..., list[str]], prompts: list[str], write: Callable[[str], object], *,
                      continues_prompt: bool) -> None:
    """`kerasllm generate`'s output through `write(text)`, from `generate(prompts, on_text=None) -> texts`: one prompt
    streams as it is produced (after the prompt itself, for a model that continues it); several print one after
    another, a blank line between continuations."""
    if len(prompts) == 1:  # the prompt is written with the first new text: a refused option prints nothing
        started = []

        def stream(row, text):
            if not started:
                started.append(write(prompts[0] if continues_prompt else ""))
            write(text)

        generate(prompts, on_text=stream)
        write(("" if started or not continues_prompt else prompts[0]) + "\n")
        return
    for text, output in zip(prompts, generate(prompts)):
        write((text + output + "\n\n") if continues_prompt else output + "\n")
