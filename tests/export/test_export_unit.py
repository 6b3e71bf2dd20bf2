"""Export checks that run before any model loads (kerasllm/export/formats.py)."""

from pathlib import Path

import pytest

from kerasllm import hub
from kerasllm.core import files
from kerasllm.core.errors import UserError
from kerasllm.export import companions
from kerasllm.export import formats as export
from tests.conftest import assert_says


def test_formats_and_default_paths(tmp_path):
    assert export.check_format("tflite") == "tflite"
    with pytest.raises(UserError, match="unknown export format 'onnxx'; use one of keras, h5, savedmodel, tflite"):
        export.check_format("onnxx")
    run = tmp_path / "run"
    run.mkdir()
    assert export.default_out(run, "tflite") == run / files.EXPORT_DIR / "model.tflite"
    assert export.default_out(tmp_path / "m.keras", "h5") == tmp_path / "m.h5"


def test_check_out_refuses_the_source_a_wrong_suffix_and_foreign_files(tmp_path):
    source = tmp_path / "model.keras"
    source.write_text("model")
    with pytest.raises(UserError, match="needs an output path ending in .h5"):
        export.check_out(tmp_path / "out.keras", "h5", source, False)
    with pytest.raises(UserError, match="is the source model itself"):
        export.check_out(source, "keras", source, True)
    existing = tmp_path / "old.h5"
    existing.write_text("old")
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        export.check_out(existing, "h5", source, False)
    export.check_out(existing, "h5", source, True)  # an earlier export of the same format may be replaced
    folder = tmp_path / "not_a_savedmodel"
    folder.mkdir()
    with pytest.raises(UserError, match="is a folder that is not a SavedModel"):
        export.check_out(folder, "savedmodel", source, True)
    export.check_out(tmp_path / "fresh.tflite", "tflite", source, False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras", "not_a_savedmodel", "old.h5"]  # nothing written


def test_presets_are_handles_or_folders_save_to_preset_wrote(tmp_path):
    assert hub.is_preset("hf://keras/bert_tiny_en_uncased") and hub.is_preset("kaggle://keras/gpt2/keras/gpt2_base_en")
    preset = tmp_path / "preset"
    preset.mkdir()
    assert not hub.is_preset(str(preset))
    (preset / "config.json").write_text("{}")
    (preset / "metadata.json").write_text("{}")
    assert hub.is_preset(str(preset))
    assert hub.preset_sha256(str(preset)) == ""  # no weights: nothing to record
    (preset / "model.weights.h5").write_bytes(b"w")
    assert hub.preset_sha256(str(preset)) == files.file_sha256(preset / "model.weights.h5")


def test_a_preset_that_fails_to_load_is_one_line_with_a_fix():
    remote = hub._failed("backbone", "hf://keras/x", OSError("Max retries exceeded\nwith url ..."))
    assert str(remote) == ("cannot load the backbone of preset hf://keras/x: Max retries exceeded; offline, download it elsewhere "
                           "and pass the local preset folder (keras-hub `save_to_preset`)")
    local = hub._failed("tokenizer", str(Path("/tmp/p")), ValueError("no vocabulary"))
    assert "check that the folder is a complete keras-hub preset" in str(local)


def test_an_export_never_writes_into_a_runs_own_files(tmp_path):
    """`export … --out OTHER_RUN/model.keras --overwrite` once replaced another run's trained model."""
    source = tmp_path / "model.keras"
    source.write_text("model")
    other = tmp_path / "other_run"
    other.mkdir()
    (other / files.CONFIG_FILE).write_text("model: lstm-textgen\n")
    (other / files.MODEL_FILE).write_text("trained")
    for out, fmt in ((other / files.MODEL_FILE, "keras"), (other / "new.h5", "h5"), (other / "m.savedmodel", "savedmodel")):
        with pytest.raises(UserError, match=f"would write into the run folder {other}, whose files are the run's own; export into "
                                            f"{other / files.EXPORT_DIR}/"):
            export.check_out(out, fmt, source, True)
    export.check_out(other / files.EXPORT_DIR / "model.keras", "keras", source, True)  # its export folder is for exports
    assert (other / files.MODEL_FILE).read_text() == "trained"


def test_offline_a_preset_handle_is_one_line_before_any_retry(monkeypatch):
    from kerasllm.core import network

    monkeypatch.setattr(network, "_reachable", {"huggingface.co": False})
    with pytest.raises(UserError) as error:
        hub.load_backbone("hf://keras/bert_tiny_en_uncased")
    assert_says(str(error.value), "cannot reach huggingface.co", "hf://keras/bert_tiny_en_uncased", "`kerasllm download`",
                "local preset folder")


def test_preset_names_read_from_keras_hubs_files_agree_with_its_lists():
    from kerasllm.core import compat

    handles = compat.hub_preset_handles()  # read without importing keras-hub (tests/commands/test_tour.py times it)
    assert handles["gpt2_base_en"].startswith("kaggle://keras/gpt2/keras/gpt2_base_en/")
    import keras_hub  # the lists keras-hub registers when imported: every backbone preset is there, with the same handle

    registered = {name: value["kaggle_handle"] for name, value in keras_hub.models.Backbone.presets.items()}
    assert {name: handles.get(name) for name in registered} == registered


def test_an_export_carries_what_the_model_needs_beside_it(trained_run, runner, tmp_path):
    """The tokenizer (labels, chat template) goes with an exported model: beside a file, inside a SavedModel."""
    import shutil

    from kerasllm import cli

    trained_run = Path(shutil.copytree(trained_run, tmp_path / "run"))  # its export/ folder is this test's own

    result = runner.invoke(cli.app, ["export", str(trained_run), "--format", "keras"])
    assert result.exit_code == 0, result.output
    copy = trained_run / files.EXPORT_DIR / "model.tokenizer.json"
    assert copy.read_bytes() == (trained_run / files.TOKENIZER_FILE).read_bytes()
    assert "beside it: model.tokenizer.json" in result.output
    assert companions.companion_paths(trained_run, trained_run / "export" / "m.savedmodel", "savedmodel") == [
        (trained_run / files.TOKENIZER_FILE, trained_run / "export" / "m.savedmodel" / "assets.extra" / files.TOKENIZER_FILE)]
    copy.write_text("edited by hand")
    (trained_run / files.EXPORT_DIR / "model.keras").unlink()  # the model is free, the file beside it is not
    result = runner.invoke(cli.app, ["export", str(trained_run), "--format", "keras"])
    assert result.exit_code == 2 and "model.tokenizer.json already exists; pass --overwrite" in result.output
    assert copy.read_text() == "edited by hand" and not (trained_run / files.EXPORT_DIR / "model.keras").exists()
    assert runner.invoke(cli.app, ["export", str(trained_run), "--format", "keras", "--overwrite"]).exit_code == 0
    assert copy.read_bytes() == (trained_run / files.TOKENIZER_FILE).read_bytes()
    result = runner.invoke(cli.app, ["export", str(trained_run), "--format", "h5"])  # the same copy serves both files
    assert result.exit_code == 0 and "beside it: model.tokenizer.json" in result.output, result.output


def test_a_bare_preset_name_is_its_kaggle_handle(tmp_path):
    assert hub.named_handle("bert_tiny_en_uncased").startswith("kaggle://keras/bert/keras/bert_tiny_en_uncased/")
    assert hub.named_handle("gpt2_base_en").startswith("kaggle://keras/gpt2/")
    assert hub.named_handle("no_such_preset") is None and hub.named_handle("runs/x") is None
    (tmp_path / "gpt2_base_en").mkdir()
    assert hub.named_handle(str(tmp_path / "gpt2_base_en")) is None  # a folder of that name is the user's


def test_another_models_export_never_replaces_a_companion_the_folders_other_exports_read(trained_run, runner, tmp_path):
    """#33's data loss: `export RUN_A --out RUN_B/export/model.keras --overwrite` replaced RUN_B's model.tokenizer.json,
    which RUN_B's model.h5 beside it still reads."""
    import json
    import shutil

    from kerasllm import cli

    run_b = Path(shutil.copytree(trained_run, tmp_path / "b"))
    run_a = Path(shutil.copytree(trained_run, tmp_path / "a"))
    tokenizer = run_a / files.TOKENIZER_FILE  # another model's tokenizer: the same text, other bytes
    tokenizer.write_text(json.dumps(json.loads(tokenizer.read_text()), indent=1))
    assert runner.invoke(cli.app, ["export", str(run_b), "--format", "h5"]).exit_code == 0
    companion = run_b / files.EXPORT_DIR / "model.tokenizer.json"
    before = companion.read_bytes()
    out = run_b / files.EXPORT_DIR / "model.keras"
    result = runner.invoke(cli.app, ["export", str(run_a), "--format", "keras", "--out", str(out), "--overwrite"])
    assert result.exit_code == 2 and "model.tokenizer.json is read by" in result.output and "model.h5" in result.output
    assert companion.read_bytes() == before and not out.exists()
    other = run_b / files.EXPORT_DIR / "a.keras"  # under its own name it goes beside them
    assert runner.invoke(cli.app, ["export", str(run_a), "--format", "keras", "--out", str(other)]).exit_code == 0
    assert companion.read_bytes() == before
