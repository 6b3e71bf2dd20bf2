"""The log-probabilities of a prompt's own tokens: `/v1/completions` with `echo: true` and `logprobs: N`.

This is what evaluation harnesses send to score text without generating it (lm-evaluation-harness's
`local-completions` model: `echo: true, logprobs: 1, max_tokens: 1`, the prompt as token ids, and the score read from
`token_logprobs[len(context):-1]`). The answer is OpenAI's legacy `logprobs` object: `tokens`, `token_logprobs` (the
first is null: nothing predicts it), `top_logprobs` (the N likeliest tokens at each position, by their text) and
`text_offset`, over the prompt and then the one token `max_tokens: 1` asks for (greedy).

Each token's log-probability is the model's own (natural log, no temperature, no token banned), given up to a whole
context of the tokens before it: a prompt longer than the model's context is read in windows of the context whose
ends advance by half of it, each scoring the tokens the last one did not (every token but the first half-context sees
at least half a context before it). The windows of a request go through the model together, padded at the end to the
context (a causal model's positions never see what comes after them), so every request has one shape.
"""

from __future__ import annotations

import numpy as np

from kerasllm import generation

# Lazy imports: the model (Keras) comes with the server's runs; this module imports neither Keras nor TensorFlow.


def windows(length: int, context: int) -> list[tuple[int, int, int]]:
    """(start, end, first): the model reads ids[start:end] and scores the positions first..end (position p is the token
    ids[p] given ids[:p]; position `length` is the token after the prompt)."""
    found, end = [(0, min(length, context), 1)], min(length, context)
    stride = max(context // 2, 1)
    while end < length:
        new_end = min(length, end + stride)
        found.append((max(0, new_end - context), new_end, end + 1))
        end = new_end
    return found


def position_logprobs(model, ids: np.ndarray, context: int) -> np.ndarray:
    """(len(ids) + 1 - 1, vocab): row p - 1 holds log P(· | ids[:p]) for p = 1 … len(ids)."""
    ids = np.asarray(ids, np.int32)
    spans = windows(len(ids), context)
    batch = np.zeros((len(spans), context), np.int32)
    for row, (start, end, _) in enumerate(spans):
        batch[row, :end - start] = ids[start:end]
    logits = np.asarray(model.predict_on_batch(batch), np.float32)  # (windows, context, vocab)
    rows = []
    for row, (start, end, first) in enumerate(spans):
        # position p is predicted by the logits at index p - 1 - start of this window
        rows.append(logits[row, first - 1 - start:end - start])
    return generation.log_softmax(np.concatenate(rows).astype(np.float64))


def token_texts(tokenizer, ids) -> list[str]:
    """Each token's text as it reads in the prompt (a special token by its spelling where the tokenizer has one)."""
    spell = getattr(tokenizer, "token_text", None)
    return [spell(int(i)) if spell else (tokenizer.vocabulary[int(i)] if int(i) in tokenizer.special_tokens.values()
                                        else tokenizer.token(int(i))) for i in ids]


def offsets(tokenizer, ids) -> list[int]:
    """Where each token starts in the decoded prompt (characters)."""
    if getattr(tokenizer, "tokens_stand_alone", True):
        lengths = [len(tokenizer.token(int(i))) for i in ids]
        return [int(x) for x in np.concatenate([[0], np.cumsum(lengths)[:-1]])] if lengths else []
    return [len(tokenizer.decode(ids[:i])) for i in range(len(ids))]


def echo(model, tokenizer, ids: np.ndarray, context: int, top_n: int, generate: int) -> dict:
    """The prompt's text and OpenAI's `logprobs` for it, then `generate` (0 or 1) greedy tokens after it: {"text",
    "logprobs", "completion_tokens"}."""
    ids = np.asarray(ids, np.int32)
    table = position_logprobs(model, ids, context)  # rows for positions 1 … len(ids)
    scored = [float(table[p - 1, ids[p]]) for p in range(1, len(ids))]
    tops = [top(tokenizer, table[p - 1], top_n) for p in range(1, len(ids))]
    all_ids = list(map(int, ids))
    if generate:
        last = table[len(ids) - 1].copy()
        last[generation.banned_ids(tokenizer, allow_eos=False)] = -np.inf  # as kerasllm's greedy sampler picks
        token = int(np.argmax(last))
        all_ids.append(token)
        scored.append(float(table[len(ids) - 1, token]))
        tops.append(top(tokenizer, table[len(ids) - 1], top_n))
    logprobs = {"tokens": token_texts(tokenizer, all_ids), "token_logprobs": [None, *scored], "top_logprobs": [None, *tops],
                "text_offset": offsets(tokenizer, all_ids)}
    return {"text": tokenizer.decode(all_ids), "logprobs": logprobs, "completion_tokens": len(all_ids) - len(ids)}


def top(tokenizer, row: np.ndarray, count: int) -> dict:
    """The `count` likeliest tokens of one position, {text: log-probability} (at least one: what OpenAI returns)."""
    return by_text(tokenizer, [(int(token), float(row[token])) for token in generation.likeliest(row, max(count, 1))])


def by_text(tokenizer, pairs: list) -> dict:
    """(token, log-probability) pairs, likeliest first, as OpenAI's legacy {text: log-probability} (two tokens that
    read the same: the likelier)."""
    found: dict = {}
    for (_, logprob), text in zip(pairs, token_texts(tokenizer, [token for token, _ in pairs])):
        found.setdefault(text, logprob)
    return found


# --- the log-probabilities of generated tokens (`logprobs` on /v1/chat/completions and /v1/completions) -------------
# Each entry is the engine's (token, log-probability, [(token, log-probability) of the likeliest]): the model's own
# distribution before temperature, top-k/top-p and banned tokens (`kerasllm.serve.engine.Slot.logprob_entry`).

def chat_logprobs(tokenizer, entries: list) -> dict:
    """OpenAI's chat `logprobs`: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}, …], "refusal": None}."""
    def described(logprob: float, text: str) -> dict:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    content = []
    for token, logprob, best in entries:
        texts = token_texts(tokenizer, [token, *(i for i, _ in best)])
        content.append({**described(logprob, texts[0]),
                        "top_logprobs": [described(lp, text) for (_, lp), text in zip(best, texts[1:])]})
    return {"content": content, "refusal": None}


def completion_logprobs(tokenizer, entries: list, offset: int = 0) -> tuple[dict, int]:
    """OpenAI's legacy completions `logprobs` ({"tokens", "token_logprobs", "top_logprobs", "text_offset"}) for the
    generated tokens, their offsets counted from `offset` characters into the completion; and the offset after them."""
    tokens = token_texts(tokenizer, [token for token, _, _ in entries])
    found = {"tokens": tokens, "token_logprobs": [logprob for _, logprob, _ in entries], "top_logprobs": [], "text_offset": []}
    for (_, _, best), text in zip(entries, tokens):
        found["top_logprobs"].append(by_text(tokenizer, best))
        found["text_offset"].append(offset)
        offset += len(text)
    return found, offset
