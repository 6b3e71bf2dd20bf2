"""Every zoo model × every export format: a round trip with parity, or a one-line refusal up front that says why."""

import json

import pytest

import cli
from kerasllm import catalog
from tests.zoo_cases import cli_args, write_cases

FORMATS = ("keras", "h5", "savedmodel", "tflite")


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
@pytest.mark.parametrize("name", [*catalog.names(), "masked-lm"])
def test_every_format_round_trips_or_is_refused_in_one_line(runner, zoo, tmp_path, name):
    outcomes = {}
    for fmt in FORMATS:
        out = tmp_path / f"{name}.{'savedmodel' if fmt == 'savedmodel' else fmt}"
        result = runner.invoke(cli.app, ["export", str(zoo[name]), "--format", fmt, "--out", str(out)])
        if result.exit_code == 0:
            assert "max |diff|" in result.output and out.exists(), (fmt, result.output)
            outcomes[fmt] = "ok"
        else:
            assert result.exit_code == 2, (fmt, result.output, repr(result.exception))
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in result.output and " cannot hold " in lines[0], (fmt, result.stderr)
            assert not out.exists()
            outcomes[fmt] = "refused: " + lines[0].removeprefix("error: ")
    print(json.dumps({name: outcomes}))
    assert outcomes["keras"] == outcomes["savedmodel"] == "ok"
