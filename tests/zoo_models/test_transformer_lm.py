"""transformer-lm: causality, cached decoding, beam search, save/load, presets, learning, the JAX backend."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kerasllm import catalog, generation
from kerasllm.data import DataInfo
from kerasllm.zoo.transformer_lm import PRESETS, TransformerCacheDecoder, TransformerLMConfig, build, count_params
from tests.commands.test_cli import assert_user_error, invoke
from tests.conftest import need

VOCAB = 40
TINY_TLM = ["model_args.num_layers=2", "model_args.num_heads=2", "model_args.hidden_dim=32", "model_args.max_sequence_length=32",
            "data.sequence_length=16", "train.batch_size=8", "train.steps_per_epoch=3", "train.epochs=2", "train.warmup_steps=2",
            "train.sample_length=10", "runtime.steps_per_execution=1"]


def tiny_tlm_args(*extra):
    return [arg for item in [*TINY_TLM, *extra] for arg in ("--set", item)]


@pytest.fixture(scope="module", params=["learned", "rotary"])
def model(request):
    import keras

    keras.utils.set_random_seed(0)
    hparams = TransformerLMConfig(num_layers=2, num_heads=2, hidden_dim=32, max_sequence_length=24, dropout=0.0,
                                  position=request.param)
    return build(hparams, DataInfo(vocab_size=VOCAB, sequence_length=16))


def test_changing_a_future_token_leaves_earlier_logits_unchanged(model):
    ids = np.random.default_rng(0).integers(4, VOCAB, (2, 16)).astype("int32")
    changed = ids.copy()
    changed[:, 9] = (changed[:, 9] + 1) % VOCAB
    before, after = model.predict(ids, verbose=0), model.predict(changed, verbose=0)
    np.testing.assert_allclose(before[:, :9], after[:, :9], atol=1e-5)
    assert np.abs(before[:, 9:] - after[:, 9:]).max() > 1e-4


class IdTokenizer:
    """Ids are the text: character c is id ord(c) - 60 (ids 0..3 special)."""

    unk_id, eos_id = 1, 3

    def encode(self, text):
        return np.array([ord(c) - 60 for c in text], np.int32)

    def never_generated(self):
        return [0, 1, 2]

    tokens_stand_alone = True  # so a StreamDecoder gives each token's own text

    def token(self, token_id):
        return chr(int(token_id) + 60)


@pytest.mark.slow
def test_cached_and_uncached_decoding_agree_under_greedy(model):
    cached = TransformerCacheDecoder.from_model(model)
    assert cached is not None
    windowed = generation.WindowedDecoder(model, 24, "logits")
    prompts = ["ABCDE", "HELLO", "XY"]  # two lengths: decoded in groups
    kwargs = dict(temperature=0, max_length=15)
    fast = generation.generate(model, IdTokenizer(), prompts, decoder=cached, **kwargs)
    slow = generation.generate(model, IdTokenizer(), prompts, decoder=windowed, **kwargs)
    assert fast == slow and all(len(text) == 15 for text in fast)
    ids = [IdTokenizer().encode(p) for p in prompts]
    np.testing.assert_allclose(cached.start(ids)[0], windowed.start(ids)[0], atol=1e-4)


def test_the_cached_step_is_compiled_with_xla_and_traced_once(model):
    cached = TransformerCacheDecoder.from_model(model)
    assert cached.xla  # built from zoo/layers.py: positions gathered, the cache written with dynamic updates
    generation.generate(model, IdTokenizer(), ["ABCDE"], 12, temperature=0, decoder=cached)
    step = cached._function(("step", 1))
    assert step.experimental_get_tracing_count() == 1  # one trace for every position (the index is a tensor)


def keras_hub_layout(position_layer: bool = True):
    """transformer-lm as it was built from keras-hub's layers before (runs saved then still generate)."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(3)
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    embedding = keras_hub.layers.ReversibleEmbedding(VOCAB, 32, name="token_embedding")
    x = embedding(tokens)
    x = keras.layers.Add(name="embeddings_add")([x, keras_hub.layers.PositionEmbedding(24, name="position_embedding")(x)])
    for i in range(2):
        x = keras_hub.layers.TransformerDecoder(64, 2, normalize_first=True, name=f"block_{i}")(x)
    x = keras.layers.LayerNormalization(name="final_norm")(x)
    return keras.Model(tokens, embedding(x, reverse=True))


def test_a_model_built_from_keras_hub_layers_still_decodes_with_the_cache(tmp_path):

    from kerasllm.export.saving import load_model

    path = tmp_path / "old.keras"
    keras_hub_layout().save(path)
    old = load_model(path)
    cached = TransformerCacheDecoder.from_model(old)
    assert cached is not None and not cached.xla  # keras-hub's sliced positions would compile once per position
    fast = generation.generate(old, IdTokenizer(), ["ABCDE", "XY"], 10, temperature=0, decoder=cached)
    slow = generation.generate(old, IdTokenizer(), ["ABCDE", "XY"], 10, temperature=0,
                               decoder=generation.WindowedDecoder(old, 24, "logits"))
    assert fast == slow


def test_generation_continues_past_the_context(model):
    cached = TransformerCacheDecoder.from_model(model)
    text = generation.generate(model, IdTokenizer(), ["ABCDEFGHIJ"], 60, temperature=0, decoder=cached)[0]
    assert len(text) == 60  # the cache slides when the 24-token context is full


@pytest.mark.parametrize("decoder_kind", ["cached", "windowed"])
def test_beam_width_one_equals_greedy(model, decoder_kind):
    make = (lambda: TransformerCacheDecoder.from_model(model)) if decoder_kind == "cached" else \
        (lambda: generation.WindowedDecoder(model, 24, "logits"))
    greedy = generation.generate(model, IdTokenizer(), ["ABCDE"], 12, temperature=0, decoder=make())
    beam = generation.generate(model, IdTokenizer(), ["ABCDE"], 12, beam_width=1, decoder=make())
    assert beam == greedy


def test_beam_search_finds_a_sequence_at_least_as_likely_as_greedy(model):
    def log_likelihood(prompt, continuation):
        ids = np.concatenate([IdTokenizer().encode(prompt), IdTokenizer().encode(continuation)])[None]
        logits = model.predict(ids[:, :-1], verbose=0)[0]
        log_probs = generation.log_softmax(logits.astype(np.float64))
        start = len(prompt) - 1
        return sum(log_probs[start + i, ids[0, start + 1 + i]] for i in range(len(continuation)))

    greedy = generation.generate(model, IdTokenizer(), ["ABCDE"], 8, temperature=0, decoder=TransformerCacheDecoder.from_model(model))[0]
    beam = generation.generate(model, IdTokenizer(), ["ABCDE"], 8, beam_width=4, decoder=TransformerCacheDecoder.from_model(model))[0]
    assert log_likelihood("ABCDE", beam) >= log_likelihood("ABCDE", greedy) - 1e-6


def test_preset_parameter_counts_are_pinned():
    counts = {name: count_params(TransformerLMConfig(**{k: v for k, v in values.items() if "." not in k}), vocab_size=69)
              for name, values in PRESETS.items()}
    assert counts == {"tiny": 810_368, "small": 10_772_352, "base": 85_895_424}
    tiny = TransformerLMConfig(**{k: v for k, v in PRESETS["tiny"].items() if "." not in k})
    assert build(tiny, DataInfo(vocab_size=69, sequence_length=64)).count_params() == counts["tiny"]
    spec = catalog.model("transformer-lm")
    assert spec.count_params(spec.hparams()) == count_params(spec.hparams())


@pytest.mark.slow
def test_a_tiny_model_overfits_one_batch():
    import keras

    keras.utils.set_random_seed(1)
    model = build(TransformerLMConfig(num_layers=1, num_heads=2, hidden_dim=32, max_sequence_length=16, dropout=0.0),
                  DataInfo(vocab_size=VOCAB, sequence_length=16))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    batch = np.random.default_rng(2).integers(4, VOCAB, (4, 17)).astype("int32")
    history = model.fit(batch[:, :-1], batch[:, 1:], epochs=60, verbose=0, batch_size=4)
    assert history.history["loss"][0] > 3.0 and history.history["loss"][-1] < 0.2


@pytest.mark.slow
def test_train_evaluate_generate_and_save_load_through_the_cli(runner, corpus_file, tmp_path):
    import keras

    out = tmp_path / "tlm"
    result = invoke(runner, "train", "transformer-lm", "--data", corpus_file, "--out", out, "--quiet", *tiny_tlm_args())
    assert result.exit_code == 0, result.output
    values = json.loads(invoke(runner, "evaluate", out, "--json").output)
    assert {"loss", "perplexity", "bits_per_char", "accuracy"} <= set(values)
    generated = invoke(runner, "generate", out, "--prompt", "The ", "--max-length", 20, "--seed", 4)
    assert generated.exit_code == 0 and generated.output.startswith("The ") and len(generated.output.rstrip("\n")) == 24
    beam = invoke(runner, "generate", out, "--prompt", "The ", "--max-length", 10, "--beam", 3)
    assert beam.exit_code == 0 and len(beam.output.rstrip("\n")) == 14
    long_prompt = invoke(runner, "generate", out, "--prompt", "x" * 50, "--max-length", 3)
    assert long_prompt.exit_code == 0 and "only its last 32 are used" in long_prompt.stderr
    other = json.loads(invoke(runner, "evaluate", out, "--data", corpus_file, "--json").output)
    assert other["data"] == str(corpus_file)
    # model + tokenizer saved and loaded reproduce the logits
    from kerasllm import runs
    from kerasllm.export.saving import load_model

    run = runs.load_run(out)
    ids = run.artifacts["tokenizer"].encode("The data model")[None]
    loaded = load_model(out / "model.keras")
    again = keras.saving.load_model(out / "model.keras", compile=False)
    np.testing.assert_allclose(loaded.predict(ids, verbose=0), again.predict(ids, verbose=0), atol=1e-6)
    assert (out / "export").exists() is False
    exported = invoke(runner, "export", out, "--format", "savedmodel", "--out", tmp_path / "tlm.savedmodel")
    assert exported.exit_code == 0, exported.output


def test_text_too_short_for_one_window_is_one_line(runner, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Too short for a window of sixty-four characters.")
    assert_user_error(invoke(runner, "train", "transformer-lm", "--data", short, "--out", tmp_path / "r"), "too few for one window")


def test_sequence_length_beyond_the_context_is_refused(runner, corpus_file, tmp_path):
    assert_user_error(invoke(runner, "train", "transformer-lm", "--data", corpus_file, "--out", tmp_path / "r",
                             *tiny_tlm_args("data.sequence_length=64")), "exceeds the context")


JAX_STEP = """
import json, numpy as np, keras
from kerasllm.data import DataInfo
from kerasllm.zoo.transformer_lm import TransformerLMConfig, build
assert keras.backend.backend() == "jax"
keras.utils.set_random_seed(0)
model = build(TransformerLMConfig(num_layers=1, num_heads=2, hidden_dim=16, max_sequence_length=8, position="{position}"),
              DataInfo(vocab_size=20, sequence_length=8))
model.compile(optimizer="adamw", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
x = np.random.default_rng(0).integers(0, 20, (4, 9)).astype("int32")
history = model.fit(x[:, :-1], x[:, 1:], epochs=2, verbose=0)
print(json.dumps(history.history["loss"]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("position", ["rotary"])  # learned positions: the whole zoo trains on JAX in test_distribute
def test_one_training_step_on_the_jax_backend(position):
    need("jax")
    env = dict(os.environ, KERAS_BACKEND="jax")
    result = subprocess.run([sys.executable, "-c", JAX_STEP.format(position=position)], capture_output=True, text=True, env=env,
                            cwd=str(Path(__file__).resolve().parents[2]), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    losses = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(losses) == 2 and all(np.isfinite(losses)) and losses[1] < losses[0]
