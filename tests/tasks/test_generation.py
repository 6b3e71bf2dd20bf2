"""Sampling on logits, the decoder interface, and the LSTM's stateful decoder."""

import numpy as np
import pytest

from kerasllm import catalog, generation, runs
from kerasllm.core.errors import UserError
from kerasllm.generation import filter_logits, sample_next


def test_greedy_picks_the_most_likely_token_but_never_a_banned_one():
    logits = np.log(np.array([[0.9, 0.05, 0.03, 0.02]]))
    assert sample_next(logits, 0.0, np.random.default_rng(0), banned=[0])[0] == 1


def test_top_k_only_samples_the_k_most_likely():
    logits = np.log(np.array([[0.4, 0.3, 0.2, 0.1]] * 2))
    rng = np.random.default_rng(0)
    picks = {int(i) for _ in range(300) for i in sample_next(logits, 1.0, rng, top_k=2)}
    assert picks == {0, 1}


@pytest.mark.parametrize("top_p, allowed", [(0.5, {0, 1}), (0.4, {0}), (0.75, {0, 1, 2}), (1.0, {0, 1, 2, 3})])
def test_top_p_never_samples_outside_its_set(top_p, allowed):
    # probabilities 0.4, 0.3, 0.2, 0.1: the smallest set reaching p
    logits = np.log(np.array([[0.4, 0.3, 0.2, 0.1]]))
    kept = set(np.flatnonzero(np.isfinite(filter_logits(logits, top_p=top_p)[0])))
    assert kept == allowed
    rng = np.random.default_rng(1)
    picks = {int(sample_next(logits, 1.0, rng, top_p=top_p)[0]) for _ in range(400)}
    assert picks == allowed


def test_low_temperature_sharpens():
    logits = np.log(np.array([[0.6, 0.4]]))
    rng = np.random.default_rng(0)
    cold = [int(sample_next(logits, 0.05, rng)[0]) for _ in range(200)]
    warm = [int(sample_next(logits, 1.0, rng)[0]) for _ in range(200)]
    assert cold.count(0) == 200 and 60 < warm.count(1) < 110


@pytest.mark.parametrize("options, message", [
    ({"temperature": float("nan")}, "--temperature"), ({"temperature": -1.0}, "--temperature"),
    ({"top_k": -1}, "--top-k"), ({"top_p": 0.0}, "--top-p"), ({"top_p": 1.5}, "--top-p"), ({"max_length": -2}, "--max-length"),
])
def test_bad_sampling_options_are_user_errors(options, message):
    values = dict(temperature=1.0, top_k=0, top_p=1.0, max_length=1) | options
    with pytest.raises(UserError, match=message):
        generation.check_options(values["temperature"], values["top_k"], values["top_p"], values["max_length"])


class CountingDecoder:
    """A fake model: after token t it always prefers t + 1 (mod vocab)."""

    vocab = 10

    def _logits(self, last):
        logits = np.full((len(last), self.vocab), -5.0)
        logits[np.arange(len(last)), (np.asarray(last) + 1) % self.vocab] = 5.0
        return logits

    def start(self, prompts):
        return self._logits([p[-1] for p in prompts]), None

    def step(self, state, tokens):
        return self._logits(tokens), state


class DigitTokenizer:
    """Ids 0..3 are special ([PAD], [UNK], [BOS], [EOS]); ids 4..9 are the digits 0..5."""

    unk_id, eos_id = 1, 3

    def encode(self, text):
        return np.array([int(c) + 4 for c in text], np.int32)

    def never_generated(self):
        return [0, 1, 2]

    tokens_stand_alone = True  # so a StreamDecoder gives each token's own text

    def token(self, token_id):
        return str(token_id - 4) if token_id >= 4 else ""


def test_batch_of_prompts_eos_stop_strings_and_streaming():
    streamed = {0: "", 1: "", 2: ""}
    texts = generation.generate(None, DigitTokenizer(), ["0", "3", "5"], 20, temperature=0, stop=["45"],
                                decoder=CountingDecoder(), on_text=lambda row, text: streamed.__setitem__(row, streamed[row] + text),
                                allow_eos=True)
    # "0" counts up 1, 2, 3, then "45" is a stop string: the continuation ends before it.
    # "3" runs straight into the stop string. After "5" (id 9) comes id 0, [PAD], which may not be
    # generated, so greedy takes the best allowed id, 3 = [EOS], and the row ends.
    assert texts == ["123", "", ""]
    assert streamed == {0: "123", 1: "", 2: ""}


def test_max_length_zero_generates_nothing():
    assert generation.generate(None, DigitTokenizer(), ["1"], 0, decoder=CountingDecoder()) == [""]


def test_stateful_lstm_decoder_matches_the_windowed_path_token_for_token(trained_run):
    from kerasllm.export.saving import load_model

    run = runs.load_run(trained_run)
    model = load_model(trained_run / "model.keras")
    spec = catalog.model("lstm-textgen")
    stateful = spec.decoder(model)
    assert stateful is not None
    windowed = generation.WindowedDecoder(model, window=200, output=spec.output)
    tokenizer = run.artifacts["tokenizer"]
    prompts = ["The ", "A longer prompt: "]
    kwargs = dict(temperature=0, seed=0)
    fast = generation.generate(model, tokenizer, prompts, 60, decoder=stateful, **kwargs)
    slow = generation.generate(model, tokenizer, prompts, 60, decoder=windowed, **kwargs)
    assert fast == slow and all(len(text) == 60 for text in fast)
    # the distributions agree too, not only the argmax (logits are defined up to a constant per row)
    ids = [tokenizer.encode(p) for p in prompts]
    log_softmax = lambda x: x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)
    np.testing.assert_allclose(log_softmax(stateful.start(ids)[0]), log_softmax(windowed.start(ids)[0]), atol=1e-4)


class PrefixDecoder:
    """A fake model whose logits depend on the whole prefix (state: one list of tokens per row), so beams differ."""

    vocab = 7

    def _logits(self, prefixes):
        rows = []
        for prefix in prefixes:
            rng = np.random.default_rng(abs(hash(tuple(prefix))) % (2**32))
            rows.append(rng.normal(size=self.vocab) * 2)
        return np.asarray(rows)

    def start(self, prompts):
        state = [list(p) for p in prompts]
        return self._logits(state), state

    def step(self, state, tokens):
        state = [prefix + [int(t)] for prefix, t in zip(state, tokens)]
        return self._logits(state), state

    def select(self, state, rows):
        return [list(state[r]) for r in rows]


@pytest.mark.parametrize("width", [1, 3])
def test_batched_beam_search_equals_one_prompt_at_a_time(width):
    prompts = [np.asarray([i]) for i in (0, 2, 5, 6)]
    options = dict(banned=[1], eos=3, length_penalty=0.8)
    batched = generation.beam_search_batch(PrefixDecoder(), prompts, 9, width, **options)
    single = [generation.beam_search(PrefixDecoder(), prompt, 9, width, **options) for prompt in prompts]
    assert batched == single and any(len(ids) > 1 for ids in batched)
    if width == 1:  # beam width 1 is greedy
        for prompt, ids in zip(prompts, batched):
            decoder, state, greedy = PrefixDecoder(), None, []
            logits, state = decoder.start([prompt])
            for _ in range(9):
                logits[:, 1] = -np.inf
                token = int(logits[0].argmax())
                if token == 3:
                    break
                greedy.append(token)
                logits, state = decoder.step(state, [token])
            assert ids == greedy
