import gzip

import numpy as np
import pytest

from kerasllm.core import network
from kerasllm.core.errors import UserError
from kerasllm.data import pipeline
from kerasllm.data.text import load_text, reload_validation
from kerasllm.tokenizers import Tokenizer
from tests.conftest import assert_says, mock_tfds


def test_corrupt_tokenizer_file_is_a_user_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        Tokenizer.load(tmp_path)


def test_windows_and_dataset_have_static_shapes():
    ids = np.arange(101, dtype=np.int32)
    windows = pipeline.language_model_windows(ids, 10)
    assert windows.shape == (10, 11)
    np.testing.assert_array_equal(windows[1], np.arange(10, 21))
    dataset = pipeline.language_model_dataset(windows, 4, shuffle_seed=1, steps_per_epoch=2, epochs=3)
    assert dataset.element_spec[0].shape.as_list() == [4, 10]
    batches = list(dataset.as_numpy_iterator())
    assert len(batches) == 6
    x, y = batches[0]
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one


def test_each_epoch_order_depends_only_on_seed_and_epoch():
    windows = pipeline.language_model_windows(np.arange(401, dtype=np.int32), 10)

    def firsts(**kwargs):
        return [x[:, 0].tolist() for x, _ in pipeline.language_model_dataset(windows, 4, shuffle_seed=5, steps_per_epoch=10, **kwargs).as_numpy_iterator()]

    straight = firsts(epochs=3)
    assert firsts(first_epoch=1, epochs=3) == straight[10:]  # resuming at epoch 1
    assert firsts(first_epoch=1, epochs=3, skip_steps=4) == straight[14:]  # resuming inside epoch 1
    assert straight[:10] != straight[10:20]  # reshuffled every epoch
    assert sorted(sum(straight[:10], [])) == list(range(0, 400, 10))  # each window once per epoch


def test_steps_checks():
    assert pipeline.steps_in(100, 8, 0, "training") == 12
    with pytest.raises(UserError, match="fewer than one batch"):
        pipeline.steps_in(3, 8, 0, "training")
    with pytest.raises(UserError, match="exceeds the 12 batches"):
        pipeline.steps_in(100, 8, 50, "training")


def test_text_file_split_is_recorded_and_reloadable(corpus_file):
    split = load_text(str(corpus_file), 0.1)
    assert len(split.train) == 18000 and len(split.validation) == 2000
    assert split.record["split"] == "last 10% of the characters is validation"
    assert reload_validation(split.record) == split.validation


def test_changed_data_is_detected(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("some text " * 50)
    record = load_text(str(path), 0.1).record
    path.write_text("other text " * 50)
    with pytest.raises(UserError, match="changed since this run was trained"):
        reload_validation(record)


def test_folder_of_txt_files(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "skip.md").write_text("ignored")
    split = load_text(str(tmp_path), 0.5)
    assert split.train + split.validation == "first\n\nsecond"


def test_builtin_corpus_is_real_english_prose():
    split = load_text("builtin:python-docs", 0.1)
    text = split.train + split.validation
    assert len(text) > 300_000
    assert text.count(" the ") > 2000


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "holds no text"),
    (b"   \n", "holds no text"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "looks like a binary file"),
    ("caf\u00e9 cr\u00e8me".encode("latin-1"), "is not UTF-8"),
    (gzip.compress(b"to be or not to be\n" * 200, mtime=0)[:-8], r"is a gzip file cut short \(\d+ bytes, the end is missing\)"),
    (b"\x1f\x8b\x08\x00garbage-after-a-gzip-header", "is a damaged gzip file"),
])
def test_bad_text_files_are_user_errors(tmp_path, content, message):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_text(str(path))


def test_empty_folder_and_unknown_builtin(tmp_path):
    with pytest.raises(UserError, match="has no .txt files"):
        load_text(str(tmp_path))
    with pytest.raises(UserError, match="unknown built-in corpus 'poems'"):
        load_text("builtin:poems")


def test_tfds_tiny_shakespeare_with_mock_data(tmp_path):
    with mock_tfds("tiny_shakespeare", {"train": 1, "validation": 1, "test": 1}, tmp_path, num_examples=1):
        split = load_text("tfds:tiny_shakespeare", 0.1)
    assert split.record["split"] == "the source's 'validation' split is validation"
    assert len(split.train) > 0 and len(split.validation) > 0


def test_tfds_without_a_held_out_split_validates_on_the_end_of_train(tmp_path):
    with mock_tfds("tiny_shakespeare", {"train": 1}, tmp_path, num_examples=1):
        split = load_text("tfds:tiny_shakespeare", 0.25)
    assert split.record["split"] == "last 25% of the characters is validation"


def test_a_tfds_download_failure_is_not_taken_for_a_missing_split(tmp_path, monkeypatch):
    """Offline, an unprepared dataset knows no splits; the download fails and says so."""
    import tensorflow_datasets as tfds

    def offline(self, *args, **kwargs):
        raise ConnectionError("Failed to establish a new connection: network is unreachable")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    monkeypatch.setattr(network, "reachable", lambda host, **_: True)  # the host answers, the download then fails
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(UserError, match="could not download tfds:tiny_shakespeare: Failed to establish"):
        load_text("tfds:tiny_shakespeare", 0.1)


def test_offline_a_tfds_download_is_one_line_before_any_retry(tmp_path, monkeypatch):
    """No network: one whole line up front, and tfds' download (minutes of urllib3 retries offline) never starts."""
    import tensorflow_datasets as tfds

    started = []
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", lambda self, *a, **k: started.append(self))
    monkeypatch.setattr(network, "_reachable", {network.TFDS_HOST: False})
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(UserError) as error:
        load_text("tfds:tiny_shakespeare", 0.1)
    assert_says(str(error.value), "cannot reach storage.googleapis.com", "tfds:tiny_shakespeare", "~/tensorflow_datasets",
                "--data")
    assert started == []


def test_unknown_tfds_name_is_a_user_error():
    with pytest.raises(UserError, match="unknown TFDS dataset 'no_such_set'"):
        load_text("tfds:no_such_set")


def test_a_table_is_not_read_as_prose(tmp_path):
    """A language model fine-tuned on a labelled CSV once trained on `film story,pos` lines."""
    table = tmp_path / "reviews.csv"
    table.write_text("text,label\nfilm story,pos\n")
    with pytest.raises(UserError, match=r"reviews.csv is a table \(.csv\), and this model trains on plain text"):
        load_text(str(table))
