"""`kerasllm compress`: a quantized copy of a run is a run of its own, measured side by side with its source."""

import json
import shutil

import pytest

from kerasllm.core import files
from kerasllm.export import saving
from tests.commands.test_cli import assert_user_error, invoke
from tests.conftest import assert_says


@pytest.fixture(scope="module")
def int8_run(runner, trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("compressed") / "int8"
    result = invoke(runner, "compress", trained_run, "--method", "int8", "--out", out)
    assert result.exit_code == 0, result.output
    return out, result


def test_an_int8_copy_is_a_run_with_its_source_and_a_before_after_table(int8_run, trained_run):
    out, result = int8_run
    for name in ("config.yaml", "data.json", "tokenizer.json", "model.keras", "metrics.json", "README.md"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["compressed_from"] == {"path": str(trained_run.resolve()), "sha256": files.file_sha256(trained_run / "model.keras")}
    before, after = metrics["before"], metrics["after"]
    assert after["size_bytes"] < before["size_bytes"] and after["gzipped_bytes"] < before["gzipped_bytes"]  # the LSTM stays float
    assert before["quantized_parameters"] == 0 < after["quantized_parameters"] <= after["parameters"] == before["parameters"]
    for side in (before, after):
        assert side["latency_ms_per_batch"] > 0 and side["tokens_per_second"] > 0 and side["perplexity"] > 1
    assert abs(after["perplexity"] / before["perplexity"] - 1) < 0.05  # int8 weights barely move a language model
    # the LSTM has no quantized form in Keras: named once, as a note
    assert "kept in float" in result.stderr and "lstm_0 (LSTM)" in result.stderr
    assert metrics["compression"]["kept_in_float"] == ["lstm_0 (LSTM)"]
    for words in ("size on disk", "gzipped", "latency per batch of 32", "cached generation", "perplexity", "after / before"):
        assert words in result.stdout
    assert "Compressed from" in (out / "README.md").read_text()


def test_every_command_works_on_the_copy_and_the_model_loads_again_quantized(runner, int8_run, tmp_path):
    out, _ = int8_run
    model = saving.load_model(out)
    assert saving.quantization_modes(model) == ["int8"]
    evaluated = invoke(runner, "evaluate", out, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    after = json.loads((out / "metrics.json").read_text())["after"]
    assert json.loads(evaluated.stdout)["perplexity"] == pytest.approx(after["perplexity"], rel=1e-4)
    generated = invoke(runner, "generate", out, "--prompt", "The", "--max-length", "8", "--temperature", "0")
    assert generated.exit_code == 0 and generated.stdout.startswith("The"), generated.output
    exported = invoke(runner, "export", out, "--format", "keras", "--out", tmp_path / "copy.keras")
    assert exported.exit_code == 0, exported.output
    assert saving.quantization_modes(saving.load_model(tmp_path / "copy.keras")) == ["int8"]


def test_what_a_copy_cannot_do_is_one_line(runner, int8_run, trained_run, tmp_path):
    out, _ = int8_run
    assert_user_error(invoke(runner, "train", "--resume", out), "is a compressed copy of")
    assert_user_error(invoke(runner, "finetune", out, "--data", "builtin:python-docs", "--out", tmp_path / "ft"),
                      "holds quantized layers (int8), which fine-tuning cannot train")
    assert_user_error(invoke(runner, "export", out, "--format", "h5", "--out", tmp_path / "m.h5"), "cannot hold quantized layers")
    assert_user_error(invoke(runner, "export", out, "--format", "tflite", "--out", tmp_path / "m.tflite"),
                      "cannot take Keras-quantized layers")
    assert_user_error(invoke(runner, "compress", out, "--out", tmp_path / "again"), "is already a compressed copy")
    assert_user_error(invoke(runner, "compress", trained_run, "--method", "int3"), "unknown compression method 'int3'")
    assert_user_error(invoke(runner, "compress", trained_run, "--out", trained_run, "--overwrite"), "--overwrite would delete")
    assert (trained_run / "model.keras").is_file() and not (tmp_path / "ft").exists() and not (tmp_path / "again").exists()


@pytest.mark.parametrize("method", ["int4", "float8"])
def test_int4_and_float8_copies_load_and_keep_the_metric(runner, trained_run, tmp_path, method):
    out = tmp_path / method
    result = invoke(runner, "compress", trained_run, "--method", method, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["run"] == str(out) and summary["compression"]["method"] == method
    assert summary["after"]["perplexity"] < 2 * summary["before"]["perplexity"]
    assert saving.quantization_modes(saving.load_model(out)) == [method]


def test_a_model_with_code_is_refused_in_safe_mode(runner, trained_run, tmp_path):
    import keras

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(100, 8)(tokens)
    x = keras.layers.Lambda(lambda t: t * 2.0)(x)
    keras.Model(tokens, keras.layers.Dense(100)(x)).save(run / "model.keras")
    assert_user_error(invoke(runner, "compress", run, "--out", tmp_path / "c"), "--unsafe")
    assert not (tmp_path / "c").exists()


# --- pruning -----------------------------------------------------------------------------------

def test_the_magnitude_mask_zeroes_the_smallest_share_and_the_schedule_is_tf_mots():
    import numpy as np

    from kerasllm.recipes.prune import magnitude_mask, sparsity_at, updates_after

    weights = np.array([[0.5, -0.1, 0.3], [-0.7, 0.2, 0.05]], "float32")
    np.testing.assert_array_equal(magnitude_mask(weights, 0.5), [[1, 0, 1], [1, 0, 0]])  # |0.05|, |0.1|, |0.2| go
    assert magnitude_mask(weights, 0.0).all()
    assert sparsity_at(0, 0.8, 100) == 0.0 and sparsity_at(100, 0.8, 100) == pytest.approx(0.8)
    assert sparsity_at(500, 0.8, 100) == pytest.approx(0.8) and sparsity_at(50, 0.8, 100) == pytest.approx(0.8 * (1 - 0.5**3))
    # masks are recomputed when a call into the graph crosses a multiple of the frequency, or the schedule's end
    assert [step for step in range(1, 40) if updates_after(step, 1, 10, 25)] == [10, 20, 25]
    assert [step for step in range(4, 40, 4) if updates_after(step, 4, 10, 25)] == [12, 20, 28]


@pytest.fixture(scope="module")
def pruned_run(runner, trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "prune"
    result = invoke(runner, "compress", trained_run, "--method", "prune", "--sparsity", "0.75", "--epochs", "3", "--out", out,
                    "--json")
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)  # --json: one JSON document, no progress


def test_pruning_reaches_its_sparsity_in_every_kernel_and_is_measured_against_the_source(pruned_run, trained_run):
    import numpy as np

    out, printed = pruned_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert printed["run"] == str(out) and printed["after"] == metrics["after"]
    assert metrics["compressed_from"]["sha256"] == files.file_sha256(trained_run / "model.keras")
    assert metrics["compression"]["method"] == "prune" and metrics["sparsity"]["total"] == pytest.approx(0.75, abs=0.01)
    for path, share in metrics["sparsity"]["layers"].items():
        assert share == pytest.approx(0.75, abs=0.01), path
    before, after = metrics["before"], metrics["after"]
    assert after["nonzero_parameters"] < 0.5 * before["nonzero_parameters"] and after["gzipped_bytes"] < before["gzipped_bytes"]
    assert after["perplexity"] > 1 and before["perplexity"] > 1
    assert int(metrics["best_checkpoint"].split("-")[1]) > 0.75 * metrics["steps"]  # only an epoch at the final sparsity
    model = saving.load_model(out)  # a plain Keras model: the masks were stripped, the zeros stay
    kernel = next(v for v in model.weights if v.path.endswith("next_token/kernel"))
    assert np.mean(np.asarray(kernel.numpy()) == 0) == pytest.approx(0.75, abs=0.01)
    assert "## Compression" in (out / "README.md").read_text() and (out / "checkpoints").is_dir()


def test_a_pruning_run_resumes_exactly(runner, pruned_run, tmp_path):
    """Killed after epoch 2 of 3 and resumed: the masks come back from the checkpoint, and the run ends where the
    straight one did."""
    import numpy as np

    straight, _ = pruned_run
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    last = sorted((resumed / "checkpoints").iterdir())[-1]
    shutil.rmtree(last)
    (resumed / "model.keras").unlink()
    result = invoke(runner, "train", "--resume", resumed, "--quiet")
    assert result.exit_code == 0, result.output
    assert (sorted((straight / "checkpoints").iterdir())[-1] / "pruning_masks.npz").is_file()
    one, two = saving.load_model(straight).get_weights(), saving.load_model(resumed).get_weights()
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(one, two)) <= 1e-6


def test_pruning_options_are_checked_first(runner, trained_run, tmp_path):
    assert_user_error(invoke(runner, "compress", trained_run, "--method", "prune", "--sparsity", "1.5", "--out", tmp_path / "p"),
                      "--sparsity must be above 0 and below 1")
    assert_user_error(invoke(runner, "compress", trained_run, "--method", "int8", "--sparsity", "0.3", "--out", tmp_path / "p"),
                      "--sparsity belongs to --method prune")
    assert_user_error(invoke(runner, "train", "lstm-textgen", "--set", "finetune.sparsity=0.5", "--out", tmp_path / "p"),
                      "finetune.sparsity prunes while fine-tuning")
    assert not (tmp_path / "p").exists()


def test_an_image_classifier_prunes_too(runner, tmp_path):
    """Fine-tuning an image run inherits nothing but its model_args (its classes are read from the data again)."""
    from tests.tasks.test_images import make_class_folder, tiny_cnn_args

    root = make_class_folder(tmp_path / "pets", per_class=10)
    run, pruned = tmp_path / "cnn", tmp_path / "pruned"
    result = invoke(runner, "train", "cnn-classifier", "--data", root, "--out", run, "--quiet", "--set", "data.validation_fraction=0.3",
                    "--set", "model_args.channels=1", *tiny_cnn_args(), "--set", "train.batch_size=4")
    assert result.exit_code == 0, result.output
    result = invoke(runner, "compress", run, "--method", "prune", "--sparsity", "0.5", "--epochs", "2", "--out", pruned, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((pruned / "metrics.json").read_text())
    assert metrics["sparsity"]["total"] == pytest.approx(0.5, abs=0.02) and "accuracy" in metrics["after"]
    assert metrics["parent"]["layers_copied"] > 0 and not metrics["parent"]["layers_new"]  # same classes: the head is kept


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gptq", pytest.param("awq", marks=pytest.mark.heavy)])
def test_gptq_and_awq_quantize_a_transformer_lm_block_by_block_and_the_copy_loads_and_answers(runner, lm_run, tmp_path, method):
    """`--method gptq|awq`: Keras' GPTQ or AWQ on the run's own training text; the 4-bit copy loads again (kerasllm
    keeps the zero points Keras 3.15.1 leaves out of the file), evaluates to the figure in its table, generates, and
    the same command gives the same weights (calibration rows fixed)."""
    import numpy as np

    from kerasllm import runs
    from kerasllm.recipes import compress as compression

    out = tmp_path / method
    result = invoke(runner, "compress", lm_run, "--method", method, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["compression"]["method"] == method and summary["compression"]["quantized_layers"] == 4  # qkv, out, MLP ×2
    assert summary["compression"]["kept_in_float"] == ["token_embedding (ReversibleEmbedding)", "position_embedding (PositionEmbedding)"]
    assert abs(summary["after"]["perplexity"] / summary["before"]["perplexity"] - 1) < 0.05
    model = saving.load_model(out)
    assert saving.quantization_modes(model) == [method]
    evaluated = json.loads(invoke(runner, "evaluate", out, "--json").stdout)
    assert evaluated["perplexity"] == pytest.approx(summary["after"]["perplexity"], rel=1e-5)
    assert invoke(runner, "generate", out, "--prompt", "The", "--max-length", "5").exit_code == 0

    run = runs.load_run(lm_run)
    again = saving.load_model(lm_run)
    compression.calibrated(again, run, method)
    kernels = lambda m: [layer.quantized_kernel.numpy() for layer in m._flatten_layers() if getattr(layer, "quantization_mode", "") == method]
    for first, second in zip(kernels(model), kernels(again), strict=True):
        np.testing.assert_array_equal(first, second)


def test_gptq_is_for_transformer_language_models(runner, trained_run, tmp_path):
    result = invoke(runner, "compress", trained_run, "--method", "gptq", "--out", tmp_path / "g")
    assert_user_error(result, "gptq quantizes a Transformer language model block by block, calibrated on its text, and "
                              "lstm-textgen is not one; use --method int4")
    assert not (tmp_path / "g").exists()


def tiny_lm_with_an_outlier_channel(outlier: int = 3):
    """A transformer-lm block whose inputs carry one channel 30× larger than the others (as LLMs' activations do)."""
    import keras

    from kerasllm import catalog
    from kerasllm.core import config as config_lib
    from kerasllm.data import DataInfo

    keras.utils.set_random_seed(7)
    spec = catalog.model("transformer-lm")
    config = config_lib.resolve(spec, None, ["model_args.num_layers=1", "model_args.hidden_dim=32", "model_args.num_heads=2",
                                             "data.sequence_length=16"])
    model = spec.build(config.model_args, DataInfo(vocab_size=50, sequence_length=16, pad_id=0))
    embedding = model.get_layer("token_embedding").embeddings
    table = keras.ops.convert_to_numpy(embedding).copy()
    table[:, outlier] *= 30.0
    embedding.assign(table)
    return model


def test_awq_scales_the_salient_channels_and_differs_from_gptq():
    """Both gather their statistics on the calibration rows (before #33 neither did: every AWQ scale was 1.0, GPTQ's
    Hessian 0, and both wrote the same round-to-nearest kernels); AWQ picks scales ≠ 1, the largest on the channel
    with the largest activations, and its kernels are not GPTQ's."""
    import numpy as np

    from kerasllm.recipes import compress

    rows = np.random.default_rng(0).integers(1, 50, size=(8, 16)).astype("int32")
    models = {method: tiny_lm_with_an_outlier_channel() for method in ("gptq", "awq")}
    for method, model in models.items():
        compress.quantize_calibrated(model, rows, method, compress.block_structure(model, "transformer-lm", method))
    qkv = {method: model.get_layer("block_0").qkv for method, model in models.items()}
    scales = np.asarray(qkv["awq"].awq_scales)
    assert not np.allclose(scales, 1.0) and int(np.argmax(scales)) == 3 and scales[3] > 1.2 * np.median(scales)
    assert not np.array_equal(np.asarray(qkv["awq"].quantized_kernel), np.asarray(qkv["gptq"].quantized_kernel))
    for method, model in models.items():  # every quantized layer was calibrated, none left at its float kernel
        block = model.get_layer("block_0")
        assert all(getattr(layer, f"is_{method}_calibrated") for layer in (block.qkv, block.attention_output, block.mlp_in, block.mlp_out))


def test_a_copy_stopped_midway_says_how_to_write_it_again(runner, trained_run, tmp_path, monkeypatch):
    """A compress killed before its copy was whole: `train --resume COPY` advises compressing again into that folder,
    not training a fresh float model under the copy's name (#33)."""
    from kerasllm.recipes import compress

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compress, "copy_run_files", killed)  # the folder as a kill -9 right after it was claimed leaves it
    out = tmp_path / "copy"
    assert invoke(runner, "compress", trained_run, "--method", "int8", "--out", out).exit_code == 130
    monkeypatch.undo()
    result = invoke(runner, "train", "--resume", out)
    assert_user_error(result, f"`kerasllm compress {trained_run.resolve()} --method int8 --out {out} --overwrite`")
    assert invoke(runner, "compress", trained_run, "--method", "int8", "--out", out, "--overwrite").exit_code == 0


def test_a_copy_that_is_larger_or_much_worse_is_named_in_one_line_each():
    """#33: pruning a digits run at 0.8 took accuracy 97.2 % → 11.1 % with no word, and a distilled "tiny" student came
    out 48× larger than its teacher."""
    from kerasllm.recipes.compress import warnings_for

    pruned = {"before": {"size_bytes": 300_000, "accuracy": 0.972, "macro_f1": 0.97},
              "after": {"size_bytes": 300_000, "accuracy": 0.111, "macro_f1": 0.04}, "compression": {"method": "prune"}}
    (line,) = warnings_for(pruned)
    assert "accuracy went 0.972 → 0.111" in line and "past --max-drop 3%" in line
    assert warnings_for(pruned, max_drop=0.95) == []  # the user's bound
    distilled = {"before": {"size_bytes": 60_000, "perplexity": 5.0}, "after": {"size_bytes": 2_900_000, "perplexity": 5.2},
                 "compression": {"method": "distill"}}
    (line,) = warnings_for(distilled)  # perplexity 4 % worse: within its 10 %
    assert "larger than its source" in line and "48.3×" in line and "smaller --student" in line
    fine = {"before": {"size_bytes": 100, "perplexity": 5.0, "accuracy": 0.5}, "after": {"size_bytes": 30, "perplexity": 5.01, "accuracy": 0.1}}
    assert warnings_for(fine) == []  # the headline metric is the task's first (perplexity), not accuracy


def test_max_drop_is_a_share(runner, trained_run):
    assert_user_error(invoke(runner, "compress", trained_run, "--max-drop", "5"), "--max-drop must be a share")


def test_a_copy_that_runs_slower_than_its_source_says_so_with_the_figures():
    """#34: Keras' int8 copies ran 2.14× slower per batch and at 0.66× the cached tokens/s of their float source here,
    and `compress` said nothing of it."""
    from kerasllm.recipes.compress import speed_note

    slower = {"before": {"latency_ms_per_batch": 105.1, "tokens_per_second": 1030.4},
              "after": {"latency_ms_per_batch": 225.0, "tokens_per_second": 678.8}, "compression": {"method": "int8"}}
    line = speed_note(slower)
    assert_says(line, "slower than its source", "2.14× the time per batch (105.1 → 225.0 ms)",
                "0.66× the cached tokens/s (1,030 → 679)", "--format tflite --quantize dynamic")
    faster = {"before": {"latency_ms_per_batch": 100.0}, "after": {"latency_ms_per_batch": 103.0}, "compression": {"method": "prune"}}
    assert speed_note(faster) is None  # within the machine's noise
