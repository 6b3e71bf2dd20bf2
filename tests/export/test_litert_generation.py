"""#31: on-device generation with LiteRT. `kerasllm export RUN --format tflite` of a transformer-lm or lstm-textgen run
also writes `model.generate.tflite` with `prefill` and `decode` signatures; the export runs the README's loop and keeps
the file only when its greedy tokens are kerasllm's. Here the loop runs again, as the README prints it, in a fresh
Python that imports ai_edge_litert and nothing of kerasllm."""

import json

from tests.commands.test_cli import invoke
from tests.conftest import assert_says
from tests.export.test_export_guide import run_snippet, snippets


def signatures(path) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path)).get_signature_list()


def test_a_transformer_lm_generates_with_the_interpreter_alone(runner, lm_run, tmp_path):
    out = tmp_path / "export" / "model.tflite"
    exported = invoke(runner, "export", lm_run, "--format", "tflite", "--out", out)
    assert exported.exit_code == 0, exported.output
    (line,) = [line for line in exported.stdout.splitlines() if line.startswith("on-device generation")]
    assert_says(line, "model.generate.tflite", "prefill and decode", "the same 26 greedy tokens", "tokens/s")  # 32 - a 6-token prompt
    found = signatures(out.with_name("model.generate.tflite"))
    assert sorted(found["prefill"]["inputs"]) == ["tokens"] and sorted(found["decode"]["inputs"]) == ["cache", "position", "token"]
    assert sorted(found["decode"]["outputs"]) == ["cache", "logits"]
    printed = run_snippet(out.parent, snippets(out.parent)["model.generate.tflite"])
    assert printed.strip().endswith("the same as kerasllm generate --temperature 0: True"), printed
    again = invoke(runner, "export", lm_run, "--format", "tflite", "--out", tmp_path / "other" / "model.tflite")
    assert again.exit_code == 0
    (tmp_path / "other" / "model.tflite").unlink()  # the generation file beside it stays: replaced only when asked
    refused = invoke(runner, "export", lm_run, "--format", "tflite", "--out", tmp_path / "other" / "model.tflite")
    assert refused.exit_code == 2 and "model.generate.tflite already exists" in refused.stderr


def test_an_lstm_with_int8_weights_is_measured_against_its_float_file(runner, trained_run, tmp_path):
    out = tmp_path / "model.tflite"
    exported = invoke(runner, "export", trained_run, "--format", "tflite", "--quantize", "dynamic", "--out", out)
    assert exported.exit_code == 0, exported.output
    (line,) = [line for line in exported.stdout.splitlines() if line.startswith("on-device generation")]
    assert_says(line, "int8 weights", "in float", "greedy tokens", "the same as the float file's over 64", "perplexity",
                "validation tokens", "float file")
    found = signatures(tmp_path / "model.generate.tflite")
    assert sorted(found["decode"]["inputs"]) == ["cache", "token"]  # an LSTM carries its state: no position
    example = json.loads((tmp_path / "model.generate.example.json").read_text())
    assert example["steps"] == 64 and example["prompt"] == "ROMEO:"


def test_no_generation_file_where_its_quantization_is_not_offered(runner, trained_run, tmp_path):
    out = tmp_path / "model.tflite"
    exported = invoke(runner, "export", trained_run, "--format", "tflite", "--quantize", "float16", "--out", out)
    assert exported.exit_code == 0, exported.output
    assert not (tmp_path / "model.generate.tflite").exists() and "on-device generation" not in exported.stdout
