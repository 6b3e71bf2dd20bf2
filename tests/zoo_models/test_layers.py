"""zoo/layers.py: every custom layer saves to .keras and loads back (safe mode) with the same outputs."""

import keras
import numpy as np
import pytest

import kerasllm.zoo.layers as layers  # noqa: E402


def tokens(batch=2, time=6):
    return keras.Input((time,), dtype="int32", name="tokens"), np.array([[2, 5, 7, 3, 0, 0], [2, 4, 3, 6, 8, 3]], "int32")[:batch]


def single_input(layer, x, sample):
    return keras.Model(x, layer(x)), sample


def round_trip(model, sample, tmp_path):
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded.predict(sample, verbose=0)), np.asarray(model.predict(sample, verbose=0)),
                               atol=1e-6)
    return loaded


def test_resize_images_round_trips(tmp_path):
    images = keras.Input((8, 8, 1))
    loaded = round_trip(keras.Model(images, layers.ResizeImages(4, 4)(images)), np.random.default_rng(0).random((2, 8, 8, 1), "float32"),
                        tmp_path)
    assert loaded.output_shape == (None, 4, 4, 1)


def test_position_embedding_round_trips(tmp_path):
    states = keras.Input((6, 4))
    model = keras.Model(states, states + layers.PositionEmbedding(6)(states))
    round_trip(model, np.ones((2, 6, 4), "float32"), tmp_path)


@pytest.mark.parametrize("rotary", [False, True])
def test_decoder_block_round_trips(tmp_path, rotary):
    states = keras.Input((6, 8))
    model = keras.Model(states, layers.DecoderBlock(16, 2, max_sequence_length=6, rotary=rotary)(states))
    round_trip(model, np.random.default_rng(1).standard_normal((2, 6, 8)).astype("float32"), tmp_path)


def test_padding_mask_and_segment_ids_round_trip(tmp_path):
    x, sample = tokens()
    model = keras.Model(x, [keras.ops.cast(layers.PaddingMask(pad_id=0)(x), "int32"), layers.SegmentIds(sep_id=3)(x)])
    path = tmp_path / "masks.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    mask, segments = loaded.predict(sample, verbose=0)
    assert mask.tolist()[0] == [1, 1, 1, 1, 0, 0]
    assert segments.tolist()[1] == [0, 0, 0, 1, 1, 1]  # after the first [SEP] (id 3) comes the second segment


@pytest.mark.parametrize("mode", ["cls", "mean"])
def test_sequence_pooling_round_trips(tmp_path, mode):
    x, sample = tokens()
    states = keras.layers.Embedding(10, 4)(x)
    round_trip(keras.Model(x, layers.SequencePooling(mode, pad_id=0)(states, x)), sample, tmp_path)


def test_gather_positions_round_trips(tmp_path):
    x, sample = tokens()
    positions = keras.Input((2,), dtype="int32", name="positions")
    states = keras.layers.Embedding(10, 4)(x)
    model = keras.Model([x, positions], layers.GatherPositions()(states, positions))
    round_trip(model, [sample, np.array([[0, 1], [2, 5]], "int32")], tmp_path)


def test_rotary_positions_compute_what_keras_hubs_rotary_embedding_did():
    """transformer-lm's rotary runs were built with keras-hub's `RotaryEmbedding`; `RotaryPositions` must rotate alike
    (a start index, per-row positions as continuous batching passes them, one position per row)."""
    import keras_hub

    x = np.random.default_rng(0).normal(size=(2, 5, 3, 8)).astype("float32")  # (batch, time, heads, head_dim)
    ours, theirs = layers.RotaryPositions(), keras_hub.layers.RotaryEmbedding()
    for kwargs in ({}, {"start_index": 7}, {"positions": np.array([[3, 4, 5, 6, 7], [0, 1, 2, 3, 4]])}):
        np.testing.assert_allclose(np.asarray(ours(x, **kwargs)), np.asarray(theirs(x, **kwargs)), atol=1e-6)
    one = x[:, :1]
    rows = np.array([[9], [2]])
    np.testing.assert_allclose(np.asarray(ours(one, positions=rows)), np.asarray(theirs(one, positions=rows)), atol=1e-6)
    assert not np.allclose(np.asarray(ours(x, start_index=1)), np.asarray(ours(x)))


@pytest.mark.filterwarnings("ignore:Layer .* does not have a `quantize` method:UserWarning")  # Keras, for each weightless layer
def test_a_rotary_transformer_lm_quantizes_to_int8():
    """`compress --method int8` of a rotary run failed: Keras' quantize refused the weightless, unbuilt `rotary` layer."""
    import numpy as np

    from kerasllm.data import DataInfo
    from zoo.transformer_lm import TransformerLMConfig, build

    model = build(TransformerLMConfig(num_layers=1, hidden_dim=16, num_heads=2, position="rotary"), DataInfo(vocab_size=40))
    float_weights = model.get_weights()
    model.quantize("int8")  # before any call, as compress quantizes a model it has just loaded
    twin = build(TransformerLMConfig(num_layers=1, hidden_dim=16, num_heads=2, position="rotary"), DataInfo(vocab_size=40))
    twin.set_weights(float_weights)
    tokens = np.arange(8)[None] % 40
    assert np.max(np.abs(np.asarray(model(tokens)) - np.asarray(twin(tokens)))) < 0.1
