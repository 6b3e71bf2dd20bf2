"""The bottom floor: run-folder names, safe writes, what may be replaced (kerasllm/core/files.py)."""

import hashlib
import json
import os

import pytest

from kerasllm.core import files
from kerasllm.core.errors import UserError


def test_atomic_writes_leave_no_partial_file(tmp_path):
    path = tmp_path / "metrics.json"
    files.write_json(path, {"loss": 1.5, "name": "é"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"loss": 1.5, "name": "é"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_write_that_fails_is_one_user_error(tmp_path):
    with pytest.raises(UserError, match=r"cannot write .*missing.* make the folder writable or free some space"):
        files.write_text_atomic(tmp_path / "missing" / "a.txt", "x")


def test_read_json_names_a_missing_or_corrupt_file(tmp_path):
    with pytest.raises(UserError, match="is missing; the run folder is incomplete"):
        files.read_json(tmp_path / "data.json")
    (tmp_path / "data.json").write_text("{not json")
    with pytest.raises(UserError, match="is corrupt .*; restore it or retrain"):
        files.read_json(tmp_path / "data.json")


def test_plan_run_dir_refuses_what_it_must_not_replace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert files.plan_run_dir("m", tmp_path / "new") == tmp_path / "new"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="is an existing file, not a folder"):
        files.plan_run_dir("m", tmp_path / "afile")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="already exists and is not empty; pass --overwrite"):
        files.plan_run_dir("m", mine)
    with pytest.raises(UserError, match="replaces only run folders made by kerasllm"):
        files.plan_run_dir("m", mine, overwrite=True)
    run = files.claim_run_dir(tmp_path / "run", model_name="m")
    (run / "data.txt").write_text("data")
    with pytest.raises(UserError, match="which holds .*data.txt"):
        files.plan_run_dir("m", run, overwrite=True, protected=[run / "data.txt"])
    with pytest.raises(UserError, match="the current folder or a parent of it"):
        files.check_replaceable(tmp_path)


def test_claim_run_dir_writes_the_marker_and_replaces_only_its_own(tmp_path):
    run = files.claim_run_dir(tmp_path / "run", model_name="lstm-textgen")
    assert json.loads((run / files.MARKER_FILE).read_text())["model"] == "lstm-textgen"
    (run / "old.txt").write_text("old")
    files.claim_run_dir(run, overwrite=True, model_name="lstm-textgen")
    assert not (run / "old.txt").exists() and files.made_by_kerasllm(run)


def test_file_sha256_is_the_digest_of_the_bytes(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"kerasllm" * 300_000)  # more than one 1 MiB block
    assert files.file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_default_run_dir_is_model_and_utc_time():
    path = files.default_run_dir("transformer-lm")
    assert path.parent.name == "runs" and path.name.startswith("transformer-lm-") and len(path.name) == len("transformer-lm-") + 15


def test_a_source_in_the_same_runs_folder_is_recorded_from_the_run_and_found_after_a_move(tmp_path):
    """#33: a fine-tune's base, a student's teacher, a copy's source survive moving the runs folder."""
    import shutil

    runs = tmp_path / "runs"
    base, tuned = runs / "base", runs / "tuned"
    for folder in (base, tuned):
        folder.mkdir(parents=True)
    assert files.portable(str(base / "model.keras"), tuned) == os.path.join("..", "base", "model.keras")
    assert files.portable(str(base), tuned) == os.path.join("..", "base")
    elsewhere = str(tmp_path / "presets" / "gpt2")
    assert files.portable(elsewhere, tuned) == elsewhere and files.portable("hf://x/y", tuned) == "hf://x/y"
    files.write_metrics(tuned, {"parent": {"path": str(base / "model.keras"), "sha256": "abc"}, "loss": 1.0})
    assert files.read_json(tuned / files.METRICS_FILE)["parent"]["path"] == os.path.join("..", "base", "model.keras")
    shutil.move(runs, tmp_path / "moved")
    moved = tmp_path / "moved"
    assert files.read_metrics(moved / "tuned") == {"parent": {"path": str(moved / "base" / "model.keras"), "sha256": "abc"},
                                                   "loss": 1.0}
    assert files.located(elsewhere, moved / "tuned") == elsewhere and files.read_metrics(tmp_path) == {}
