"""Every zoo model × every export format (TFLite also with dynamic-range and int8 quantization, ONNX, and the formats
for other runtimes: a Hugging Face folder checked in transformers, a GGUF file read back and, with llama-cpp-python,
checked in llama.cpp): a round trip with parity (a quantized file judged by top-1 agreement), or a one-line refusal
that says why and what works instead."""

import json

import pytest

from kerasllm import cli
from tests.zoo_cases import cli_args, matrix_names, write_cases

# (format, --quantize): every format, and the TFLite converter's dynamic-range and full-integer quantization (float16
# is the converter's weight cast, exercised in tests/export/test_export_quantize.py)
FORMATS = (("keras", "none"), ("h5", "none"), ("savedmodel", "none"), ("tflite", "none"), ("tflite", "dynamic"), ("tflite", "int8"),
           ("onnx", "none"), ("hf", "none"), ("gguf", "none"))
CONSUMER_PARITY = {"hf": "max |logit diff|", "gguf": "read back"}  # what their line says when they are written


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, runner):
    """One tiny trained run of every registered model."""
    folder = tmp_path_factory.mktemp("zoo")
    found = {}
    for name, settings in write_cases(folder / "data").items():
        run_dir = folder / name
        result = runner.invoke(cli.app, cli_args(name, settings, run_dir))
        assert result.exit_code == 0, (name, result.output, repr(result.exception))
        found[name] = run_dir
    mlm = folder / "masked-lm"  # transformer-classifier pretrained with --objective mlm: a second input (mask positions)
    settings = dict(write_cases(folder / "data"))["transformer-classifier"]
    corpus = f"data.source={folder / 'data' / 'corpus.txt'}"
    result = runner.invoke(cli.app, cli_args("transformer-classifier", [*settings, "train.objective=mlm", corpus], mlm))
    assert result.exit_code == 0, (result.output, repr(result.exception))
    found["masked-lm"] = mlm
    return found


@pytest.mark.slow
@pytest.mark.heavy  # every model: the heavy tier (.ci/heavy)
@pytest.mark.parametrize("name", [*matrix_names(), "masked-lm"])
def test_every_format_round_trips_or_is_refused_in_one_line(runner, zoo, tmp_path, name):
    outcomes = {}
    for fmt, quantize in FORMATS:
        key = fmt if quantize == "none" else f"{fmt} {quantize}"
        out = tmp_path / f"{name}-{quantize}.{fmt}"
        result = runner.invoke(cli.app, ["export", str(zoo[name]), "--format", fmt, "--quantize", quantize, "--out", str(out)])
        if result.exit_code == 0 and fmt in CONSUMER_PARITY:
            assert CONSUMER_PARITY[fmt] in result.output and out.exists(), (key, result.output)
            outcomes[key] = "ok"
        elif result.exit_code == 0:
            assert "max |diff|" in result.output and "top-1 agreement" in result.output and out.exists(), (key, result.output)
            outcomes[key] = "ok"
            if fmt == "tflite" and quantize in ("none", "dynamic"):  # a language model's LiteRT prefill/decode loop
                generated = out.with_name(out.stem + ".generate.tflite").exists()
                assert generated == ("on-device generation" in result.output), (key, result.output)
                outcomes[f"{key} generate"] = "ok" if generated else "not a language model with a cached decoder"
        else:
            assert result.exit_code == 2, (key, result.output, repr(result.exception))
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in result.output, (key, result.stderr)
            why = (" takes ", " writes ") if fmt in CONSUMER_PARITY else (" cannot hold ", " cannot calibrate ", " cannot convert ")
            assert any(words in lines[0] for words in why), (key, lines[0])
            assert not out.exists()
            outcomes[key] = "refused: " + lines[0].removeprefix("error: ")
    print(json.dumps({name: outcomes}))
    assert outcomes["keras"] == outcomes["savedmodel"] == "ok"
    if name == "transformer-lm":  # char tokens, learned positions: both runtimes take it
        assert outcomes["hf"] == outcomes["gguf"] == "ok"
    if name in ("transformer-lm", "lstm-textgen"):
        assert outcomes["tflite generate"] == outcomes["tflite dynamic generate"] == "ok"
    assert outcomes["tflite dynamic"] == "ok" or outcomes["tflite"] != "ok"  # what converts in float converts with int8 weights


@pytest.mark.slow
@pytest.mark.heavy  # every model: the heavy tier (.ci/heavy)
@pytest.mark.parametrize("name", matrix_names())
def test_every_zoo_model_compresses_to_int8(runner, zoo, tmp_path, name):
    """`kerasllm compress --method int8` on each tiny run: the copy loads, its task metric is measured before and after,
    and `evaluate` on the copy gives the copy's figure (quantized layers nested in other layers load again)."""
    from kerasllm.recipes import compress as compression

    copy = tmp_path / "int8"
    compressed = runner.invoke(cli.app, ["compress", str(zoo[name]), "--method", "int8", "--out", str(copy), "--json"])
    assert compressed.exit_code == 0, (compressed.output, repr(compressed.exception))
    summary = json.loads(compressed.stdout)
    after = summary["after"]
    assert summary["compression"]["quantized_layers"] > 0 and after["quantized_parameters"] > 0
    measured = {key for _, key, _ in compression.ROWS}  # size, parameters, latency, speed: the rest is the task's quality
    keys = [key for key in summary["before"] if key not in measured]
    assert keys, "the task's quality metrics are measured"
    evaluated = runner.invoke(cli.app, ["evaluate", str(copy), "--json"])
    assert evaluated.exit_code == 0, (evaluated.output, repr(evaluated.exception))
    results = json.loads(evaluated.stdout)
    for key in keys:
        assert results[key] == pytest.approx(after[key], rel=1e-3, abs=1e-3), key
    print(json.dumps({name: {"quantized_layers": summary["compression"]["quantized_layers"],
                             "kept_in_float": summary["compression"]["kept_in_float"],
                             "size": [summary["before"]["size_bytes"], after["size_bytes"]],
                             **{key: [summary["before"][key], after[key]] for key in keys}}}))
