"""A batch that cannot fit is refused before any work: the lower bound on a step's memory (kerasllm.train.memory)."""

import keras
import pytest

from kerasllm.core.errors import UserError
from kerasllm.train import memory

MB = 1024**2


def small_lm(length=None, vocab=50, width=16, heads=2):
    tokens = keras.Input((length,), dtype="int32")
    x = keras.layers.Embedding(vocab, width)(tokens)
    x = keras.layers.MultiHeadAttention(heads, width // heads)(x, x)
    return keras.Model(tokens, keras.layers.Dense(vocab)(x))


def test_the_bound_counts_graph_tensors_and_attention_scores_with_open_axes_taken_as_the_length():
    model = small_lm()
    # the token ids 1 + embedding 16 + attention output 16 + logits 50 per token, and 2 heads × T × T scores
    assert memory.activations_per_example(model, 10) == 10 * (1 + 16 + 16 + 50) + 2 * 10 * 10 == 1030
    assert memory.activations_per_example(small_lm(length=12), 10) == 12 * 83 + 2 * 10 * 10  # a fixed axis is the model's
    fixed, per_example = memory.step_bytes(model, 10, training=True)
    assert fixed == model.count_params() * 16 and per_example == 1030 * 4 * 2  # weights, gradients, 2 moments; both passes
    assert memory.step_bytes(model, 10, training=False) == (model.count_params() * 4, 1030 * 4)


def test_a_transformer_block_counts_what_it_keeps_inside_for_the_backward_pass():
    from kerasllm.zoo.layers import DecoderBlock

    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(50, 16)(tokens)
    model = keras.Model(tokens, DecoderBlock(intermediate_dim=64, num_heads=2)(x))
    # ids 1 + embedding 16 + block output 16 per token; inside the block 6 × 16 + 2 × 64; 2 heads × T × T scores
    assert memory.block_internals(model.layers[-1], 10) == 10 * (6 * 16 + 2 * 64)
    assert memory.activations_per_example(model, 10) == 10 * (1 + 16 + 16) + 10 * (6 * 16 + 2 * 64) + 2 * 10 * 10


def test_a_batch_over_free_memory_is_one_line_with_the_largest_that_can_fit():
    model = small_lm()
    fixed, per_example = memory.step_bytes(model, 10, training=True)
    free = fixed + per_example * 1000
    memory.check_batch(model, 1000, 10, training=True, setting="--batch-size", free=free)  # fits exactly
    with pytest.raises(UserError) as error:
        memory.check_batch(model, 5000, 10, training=True, setting="--batch-size", free=free)
    assert str(error.value).startswith("--batch-size 5000 needs at least")
    assert "at most 1,000 can fit, fewer in practice" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UserError, match="at most 500 per replica can fit"):
        memory.check_batch(model, 5000, 10, training=True, setting="--batch-size", replicas=2, free=free)
    with pytest.raises(UserError, match="the model alone does not fit"):
        memory.check_batch(model, 1, 10, training=True, setting="--batch-size", free=fixed // 2)
    memory.check_batch(model, 10**9, 10, training=True, setting="--batch-size", free=free, on_cpu=False)  # a GPU's own


def test_free_memory_reads_meminfo_and_a_cgroup_limit(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal: 100 kB\nMemAvailable:    2048 kB\n")
    cgroup = tmp_path / "cg"
    cgroup.mkdir()
    assert memory.free_bytes(tmp_path / "meminfo", cgroup) == 2048 * 1024
    (cgroup / "memory.max").write_text("1048576\n")
    (cgroup / "memory.current").write_text("524288\n")
    assert memory.free_bytes(tmp_path / "meminfo", cgroup) == 524288
    (cgroup / "memory.max").write_text("max\n")
    assert memory.free_bytes(tmp_path / "meminfo", cgroup) == 2048 * 1024
    assert memory.free_bytes(tmp_path / "nothing", cgroup) is None


def test_the_length_of_a_batch_is_the_shortest_row_of_its_inputs():
    import tensorflow as tf

    spec = ({"source": tf.TensorSpec((None, 40)), "target_in": tf.TensorSpec((None, 24))}, tf.TensorSpec((None, 24)))
    assert memory.example_length(spec) == 24
    assert memory.example_length((tf.TensorSpec((None, 28, 28, 1)), tf.TensorSpec((None,)))) == 28
    assert memory.example_length((tf.TensorSpec((None,)), tf.TensorSpec((None,)))) == 1


def test_train_refuses_a_batch_that_cannot_fit_before_writing_anything(runner, corpus_file, tmp_path, monkeypatch):
    from kerasllm import cli

    monkeypatch.setattr(memory, "free_bytes", lambda: 4 * MB)
    out = tmp_path / "run"
    result = runner.invoke(cli.app, ["train", "lstm-textgen", "--data", str(corpus_file), "--out", str(out), "--batch-size", "150",
                                     "--set", "model_args.units=32", "--quiet"])
    assert result.exit_code == 2, result.output
    assert "--batch-size 150 needs at least" in result.stderr and "can fit" in result.stderr and not out.exists()
