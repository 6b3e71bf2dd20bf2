"""Speculative decoding (`kerasllm generate RUN --draft DRAFT_RUN --draft-tokens K`): a small draft model proposes K
tokens one at a time, and the target checks them all in one pass over its key/value cache.

Both are transformer-lm runs with the same tokenizer (a `tiny` student distilled from a `small` run is what `kerasllm
compress --method distill` makes). A round feeds the target the last token it has not seen and the K proposals at
once (`TransformerCacheDecoder.call_all_with_cache`), which gives its distribution after each of them:

- greedy (temperature 0): proposals are kept while each is the target's own argmax; the first that is not is replaced
  by the target's choice, and when all K are kept the target's next choice comes free. The text is the target's alone,
  token for token.
- sampling: the draft samples each proposal x from its distribution q; the target keeps it with probability
  min(1, p(x) / q(x)), and at the first it rejects samples from max(0, p - q) renormalized; when all are kept it samples
  one more from p (Leviathan et al., 2023; Chen et al., 2023). p and q are the distributions `generate` samples from
  (temperature, top-k, top-p, the tokens never sampled), so the text follows the target's distribution.

Rejected positions stay in both caches and are written over by the next round (a position is read only once written).
A round proposes only what fits before the target's context is full, and a full target starts again from the last half
of the text exactly where `generate` does, so greedy text stays the target's across the slide; the draft slides on its
own. Batch 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kerasllm import generation
from kerasllm.core.errors import UserError

# Lazy imports: Keras and TensorFlow come with the models' decoders; this module imports neither.


@dataclass
class Counts:
    """What the draft did: tokens proposed, proposals the target kept, target passes."""

    proposed: int = 0
    accepted: int = 0
    passes: int = 0

    def line(self) -> str:
        rate = self.accepted / self.proposed if self.proposed else 0.0
        per_pass = (self.accepted + self.passes) / self.passes if self.passes else 0.0
        return (f"speculative decoding: {rate:.0%} of {self.proposed:,} draft tokens kept, {per_pass:.2f} tokens per pass of "
                "the target")


class Side:
    """One model's cache during speculative decoding: `feed(tokens)` writes them from `position` on and returns the
    logits after each of them (float64, (len, vocab))."""

    def __init__(self, decoder):
        self.decoder, self.caches, self.position = decoder, None, 0

    def start(self, ids: list[int]) -> None:
        """The cache holding `ids` (padded to a few compiled lengths, as `generate` seeds it), from position 0."""
        if ids:
            _, self.caches = self.decoder._seed(np.asarray([ids], np.int32))
        else:
            self.caches = self.decoder._empty_caches(1)
        self.position = len(ids)

    def feed(self, tokens: list[int]) -> np.ndarray:
        from keras import ops

        call = self.decoder._function(("all", 1, len(tokens)))
        logits, self.caches = call(ops.convert_to_tensor(np.asarray([tokens], np.int32)), self.caches,
                                   self.decoder._int(self.position))
        self.position += len(tokens)
        return np.asarray(ops.convert_to_numpy(logits), np.float64)[0]


def decoders(target_model, draft_model, target_spec, draft_spec):
    """The two models' cached decoders; one line when either cannot take part."""
    from kerasllm.zoo.transformer_lm import TransformerCacheDecoder

    found = []
    for model, spec, role in ((target_model, target_spec, "the run"), (draft_model, draft_spec, "--draft")):
        decoder = TransformerCacheDecoder.from_model(model) if spec.name == "transformer-lm" else None
        if decoder is None:
            raise UserError(f"speculative decoding takes transformer-lm runs, and {role} is {spec.name}; drop --draft")
        found.append(decoder)
    return found


def check_tokenizers(target_tokenizer, draft_tokenizer) -> None:
    if list(target_tokenizer.vocabulary) != list(draft_tokenizer.vocabulary):
        raise UserError("--draft must read text with the run's own tokenizer (the same vocabulary at the same ids): distill "
                        "it from the run (`kerasllm compress RUN --method distill --student tiny`)")


def generate(target, draft, tokenizer, prompt: list[int], max_length: int, options: generation.Sampling, k: int,
             on_token=None) -> tuple[list[int], Counts]:
    """Up to `max_length` new tokens after `prompt` from `target` (a `TransformerCacheDecoder`) with `draft` proposing
    `k` at a time; `on_token(token)` hears each as it is decided and ends the generation by returning True. Returns
    (the tokens, the counts)."""
    if k < 1:
        raise UserError("--draft-tokens must be at least 1")
    rng = np.random.default_rng(options.seed)
    eos = tokenizer.eos_id if options.allow_eos else None  # as `generate`: a chat reply ends at [EOS]
    banned = generation.banned_ids(tokenizer, options.allow_eos)
    aimed, drafting, counts, out = Side(target), Side(draft), Counts(), []
    history = [int(i) for i in prompt][-target.context:]
    aimed.start(history[:-1])
    drafting.start(history[-draft.context:][:-1])
    while len(out) < max_length:
        pending = history[-1]  # the newest token: neither cache holds it yet
        if aimed.position >= target.context:  # full: the last half of the text, as `generate` slides
            aimed.start(history[-(target.context // 2):][:-1])
        room = min(k, target.context - 1 - aimed.position)  # proposals that fit before the target must slide
        if drafting.position + room + 1 > draft.context:
            drafting.start(history[-(draft.context // 2):][:-1])
        proposals, drafted = propose(drafting, pending, room, options, banned, rng)
        checked = aimed.feed([pending, *proposals])  # the target's logits after pending and after each proposal
        kept, chosen = judge(checked, proposals, drafted, options, banned, rng)
        counts.proposed, counts.accepted, counts.passes = counts.proposed + room, counts.accepted + kept, counts.passes + 1
        # each cache keeps pending and the kept proposals, the rest to be written over; the draft reads what it lacks
        aimed.position -= room - kept
        fed, needed = [pending, *proposals[:-1]] if room else [], [pending, *proposals[:kept]]
        drafting.position -= len(fed) - min(len(fed), len(needed))
        if len(needed) > len(fed):
            drafting.feed(needed[len(fed):])
        for token in [*proposals[:kept], chosen]:
            if (eos is not None and token == eos) or len(out) >= max_length:
                return out, counts
            out.append(token)
            history.append(token)
            if on_token and on_token(token):  # the caller has what it wants (a stop string)
                return out, counts
    return out, counts


def propose(draft: Side, pending: int, k: int, options, banned, rng) -> tuple[list[int], list]:
    """The draft's `k` proposals after `pending` and, when sampling, the distribution each was drawn from."""
    proposals, drafted, token = [], [], pending
    for _ in range(k):  # k may be 0: the target alone, at the end of its context
        logits = draft.feed([token])[-1:]
        if options.temperature <= 0:
            token = int(generation.sample_next(logits, 0.0, rng, banned=banned)[0])
        else:
            q = generation.distribution(logits, options.temperature, top_k=options.top_k, top_p=options.top_p, banned=banned)[0]
            token = int(rng.choice(len(q), p=q))
            drafted.append(q)
        proposals.append(token)
    return proposals, drafted


def judge(checked: np.ndarray, proposals: list[int], drafted: list, options, banned, rng) -> tuple[int, int]:
    """(how many proposals the target keeps, the token it adds after them): `checked[i]` is its logits before
    proposal i, `checked[len(proposals)]` after the last."""
    if options.temperature <= 0:
        picks = generation.sample_next(checked, 0.0, rng, banned=banned)
        kept = next((i for i, token in enumerate(proposals) if picks[i] != token), len(proposals))
        return kept, int(picks[kept])
    p = generation.distribution(checked, options.temperature, top_k=options.top_k, top_p=options.top_p, banned=banned)
    for i, (token, q) in enumerate(zip(proposals, drafted)):
        if rng.random() >= min(1.0, p[i, token] / q[token]):  # rejected: the target's own choice from what p has over q
            return i, resample(p[i], q, rng)
    return len(proposals), int(rng.choice(p.shape[1], p=p[-1]))


def resample(p: np.ndarray, q: np.ndarray, rng) -> int:
    """A token from max(0, p - q) renormalized (p itself where q covers it everywhere: a rejection with p = q)."""
    rest = np.maximum(p - q, 0.0)
    total = rest.sum()
    return int(rng.choice(len(p), p=rest / total if total > 0 else p))


def continuations(model, run, draft_model, draft_run, prompts: list[str], *, max_length: int, k: int, on_text=None,
                  **sampling) -> tuple[list[str], Counts]:
    """`kerasllm generate RUN --draft DRAFT`'s continuations of plain-text prompts (streamed through `on_text(row,
    text)`, cut at `stop` strings as `generate` cuts them), and the counts over all of them."""
    tokenizer = run.artifacts["tokenizer"]
    check_tokenizers(tokenizer, draft_run.artifacts["tokenizer"])
    target, draft = decoders(model, draft_model, run.spec, draft_run.spec)
    options = generation.Sampling(**{"temperature": 0.8, **sampling})
    rows = generation.Rows(tokenizer, len(prompts), [s for s in options.stop if s], on_text)
    total = Counts()
    for row, text in enumerate(prompts):
        def heard(token, row=row):
            rows.push(row, token)
            rows.emit(row, rows.done[row])
            return rows.done[row]

        prompt = [int(i) for i in generation.encode_prompt(tokenizer, text)]
        _, counts = generate(target, draft, tokenizer, prompt, max_length, options, k, on_token=heard)
        rows.emit(row, True)
        total.proposed, total.accepted, total.passes = (total.proposed + counts.proposed, total.accepted + counts.accepted,
                                                        total.passes + counts.passes)
    return rows.texts, total
