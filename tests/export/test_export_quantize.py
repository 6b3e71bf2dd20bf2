"""`kerasllm export --format tflite --quantize dynamic|float16|int8`: judged by top-1 agreement with the source, and
every export prints the copy against its source (max |diff|, agreement, size, latency per batch)."""

import re

import pytest

from tests.commands.test_cli import assert_user_error, invoke
from tests.tasks.test_images import make_class_folder, tiny_cnn_args


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory, runner):
    root = make_class_folder(tmp_path_factory.mktemp("images") / "pets", per_class=10)
    out = tmp_path_factory.mktemp("runs") / "cnn"
    result = invoke(runner, "train", "cnn-classifier", "--data", root, "--out", out, "--quiet", "--set", "data.validation_fraction=0.3",
                    "--set", "model_args.channels=1", *tiny_cnn_args(), "--set", "train.batch_size=4")
    assert result.exit_code == 0, result.output
    return out


def figures(line: str) -> dict:
    found = re.search(r"max \|diff\| ([\d.e+-]+).*top-1 agreement ([\d.]+)%.*latency per batch of \d+ ([\d.]+) → ([\d.]+) ms", line)
    assert found, line
    return {"diff": float(found[1]), "agreement": float(found[2]), "source_ms": float(found[3]), "copy_ms": float(found[4])}


@pytest.mark.parametrize("quantize", ["none", "dynamic", "float16", "int8"])
def test_a_quantized_tflite_file_agrees_with_its_source(runner, cnn_run, tmp_path, quantize):
    out = tmp_path / f"{quantize}.tflite"
    result = invoke(runner, "export", cnn_run, "--format", "tflite", "--quantize", quantize, "--out", out)
    assert result.exit_code == 0, result.output
    line, beside, guide = result.stdout.strip().splitlines()
    assert line.startswith(f"wrote {out} (tflite")  # one whole line, never cut at 80 columns
    assert beside.startswith(f"beside it: {quantize}.labels.json")  # the class names go with the model
    assert guide == f"how to run it with TensorFlow alone: {tmp_path / 'README.md'}"
    assert f"## {quantize}.tflite (tflite" in (tmp_path / "README.md").read_text()
    found = figures(line)
    assert found["agreement"] >= 90 and found["source_ms"] > 0 and found["copy_ms"] > 0
    assert (found["diff"] <= 1e-4) if quantize == "none" else ("at least 90% needed" in line)


def test_quantized_files_are_smaller_and_the_converter_says_nothing(runner, trained_run, tmp_path):
    sizes = {}
    for quantize in ("none", "dynamic", "float16"):
        out = tmp_path / f"{quantize}.tflite"
        result = invoke(runner, "export", trained_run, "--format", "tflite", "--quantize", quantize, "--out", out)
        assert result.exit_code == 0, result.output
        assert result.stderr == ""  # no "fully_quantize: 0, …" or XNNPACK delegate lines
        sizes[quantize] = out.stat().st_size
    assert sizes["dynamic"] < sizes["none"] and sizes["float16"] < sizes["none"]  # (a tiny model: its biases and LSTM state stay)


def test_what_quantizing_cannot_do_is_one_line(runner, trained_run, cnn_run, tmp_path):
    assert_user_error(invoke(runner, "export", trained_run, "--format", "keras", "--quantize", "int8", "--out", tmp_path / "m.keras"),
                      "--quantize int8 is a TFLite converter option")
    assert_user_error(invoke(runner, "export", trained_run, "--format", "tflite", "--quantize", "int3", "--out", tmp_path / "m.tflite"),
                      "unknown --quantize 'int3'")
    assert_user_error(invoke(runner, "export", trained_run, "--format", "tflite", "--calibration-data", "x.txt",
                             "--out", tmp_path / "m.tflite"), "--calibration-data calibrates --quantize int8")
    assert_user_error(invoke(runner, "export", trained_run, "--format", "tflite", "--quantize", "int8", "--out", tmp_path / "m.tflite"),
                      "cannot calibrate LSTM layers")  # TFLite's calibrator would end the process
    result = invoke(runner, "export", trained_run, "--format", "tflite", "--quantize", "dynamic", "--out", tmp_path / "d.tflite")
    assert result.exit_code == 0 and figures(result.stdout)["agreement"] >= 90, result.output
    assert not (tmp_path / "m.tflite").exists() and not (tmp_path / "m.keras").exists()


def test_an_onnx_file_runs_in_onnxruntime_beside_its_source(runner, cnn_run, trained_run, tmp_path):
    """Keras' ONNX export (tf2onnx), loaded in onnxruntime and checked like every format; the folder's README runs it
    with onnxruntime alone."""
    for run_dir, name in ((cnn_run, "cnn"), (trained_run, "lstm")):
        out = tmp_path / f"{name}.onnx"
        result = invoke(runner, "export", run_dir, "--format", "onnx", "--out", out)
        assert result.exit_code == 0, result.output
        line = result.stdout.strip().splitlines()[0]
        assert line.startswith(f"wrote {out} (onnx") and figures(line)["diff"] <= 1e-4 and figures(line)["agreement"] == 100, line
        assert result.stdout.strip().splitlines()[-1] == f"how to run it with onnxruntime alone: {tmp_path / 'README.md'}"
    assert 'session = onnxruntime.InferenceSession("lstm.onnx")' in (tmp_path / "README.md").read_text()


def test_an_op_tf2onnx_cannot_convert_is_one_line_naming_it(runner, lm_run, tmp_path):
    """transformer-lm's exact GELU becomes an `Erfc` node that no ONNX runtime registers (tf2onnx 1.17, TF 2.21)."""
    out = tmp_path / "lm.onnx"
    assert_user_error(invoke(runner, "export", lm_run, "--format", "onnx", "--out", out), "cannot convert its Erfc op")
    assert not out.exists()
