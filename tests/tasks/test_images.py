"""Image data sources, classification metrics and the cnn-classifier through the CLI."""

import gzip
import json

import numpy as np
import pytest
from PIL import Image

from kerasllm import evaluation
from kerasllm.core.errors import UserError
from kerasllm.data.images import load_images, read_idx, to_channels
from tests.commands.test_cli import assert_user_error, invoke
from tests.conftest import mock_tfds

TINY_CNN = ["model_args.width=4", "model_args.depth=1", "model_args.convs_per_block=1", "train.batch_size=8",
            "train.steps_per_epoch=2", "train.epochs=1", "train.warmup_steps=1", "runtime.jit_compile=false"]


def tiny_cnn_args():
    return [arg for item in TINY_CNN for arg in ("--set", item)]


def write_idx(path, array, compress=False):
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def make_class_folder(root, sizes=((12, 12), (16, 10)), per_class=6):
    rng = np.random.default_rng(0)
    for label, name in enumerate(["cat", "dog"]):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            height, width = sizes[i % len(sizes)]
            pixels = rng.integers(0, 60, (height, width), dtype=np.uint8) + 150 * label
            image = Image.fromarray(pixels, "L")
            if i == 0:
                image = image.convert("RGB")  # one colour image among grayscale ones
            image.save(folder / f"{i}.{'png' if i % 2 else 'bmp'}")
    return root


# --- sources --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True])
def test_idx_reader(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x", images, compress)
    np.testing.assert_array_equal(read_idx(tmp_path / "x"), images)


def test_idx_errors(tmp_path):
    write_idx(tmp_path / "z", np.zeros((2, 3, 4)), True)
    (tmp_path / "cut").write_bytes((tmp_path / "z").read_bytes()[:-6])
    with pytest.raises(UserError, match="is a gzip file cut short .* copy or download it again"):
        read_idx(tmp_path / "cut")
    write_idx(tmp_path / "x", np.zeros((2, 3, 4)))
    (tmp_path / "short").write_bytes((tmp_path / "x").read_bytes()[:-5])
    with pytest.raises(UserError, match="is truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(UserError, match="bad magic number"):
        read_idx(tmp_path / "bad")


def mnist_folder(root, train=40, test=12):
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (train, 28, 28)), compress=True)
    write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(train) % 10, compress=True)
    write_idx(root / "t10k-images-idx3-ubyte", rng.integers(0, 255, (test, 28, 28)))
    write_idx(root / "t10k-labels-idx1-ubyte", np.arange(test) % 10)
    return root


def test_mnist_idx_folder_uses_the_test_set_for_validation(tmp_path):
    split = load_images(str(mnist_folder(tmp_path / "mnist")))
    assert split.x_train.shape == (40, 28, 28, 1) and split.x_validation.shape == (12, 28, 28, 1)
    assert split.record["validation_is_test_split"] and split.class_names == [str(i) for i in range(10)]
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match="lacks t10k-labels-idx1-ubyte"):
        load_images(str(tmp_path / "mnist"))


def test_class_folders_resize_mixed_sizes_convert_channels_and_skip_non_images(tmp_path):
    root = make_class_folder(tmp_path / "pets")
    (root / "cat" / "notes.txt").write_text("not an image")
    split = load_images(str(root), validation_fraction=0.25, channels=1)
    assert split.class_names == ["cat", "dog"]
    assert split.x_train.shape[1:] == (12, 12, 1)  # the most common size; channels converted to 1
    assert len(split.x_train) + len(split.x_validation) == 12
    assert split.record["skipped_files"] == [str(root / "cat" / "notes.txt")]
    rgb = load_images(str(root), image_size=20)  # channels from the data: one RGB image makes it RGB
    assert rgb.x_train.shape[1:] == (20, 20, 3)


@pytest.mark.parametrize("damage, message", [
    ("corrupt", "cannot decode image"),
    ("empty", "has no images"),
    ("single", "has 1 class folder"),
])
def test_bad_class_folders(tmp_path, damage, message):
    root = make_class_folder(tmp_path / "pets")
    if damage == "corrupt":
        data = (root / "dog" / "1.png").read_bytes()
        (root / "dog" / "1.png").write_bytes(data[: len(data) // 2])  # truncated PNG
    elif damage == "empty":
        (root / "bird").mkdir()
    else:
        for path in (root / "dog").iterdir():
            path.unlink()
        (root / "dog").rmdir()
    with pytest.raises(UserError, match=message):
        load_images(str(root))


def test_npz_sources_and_label_checks(tmp_path):
    x = np.random.default_rng(0).random((20, 6, 6))  # floats 0..1 are scaled to 0..255
    np.savez(tmp_path / "ok.npz", x=x, y=np.arange(20) % 4)
    split = load_images(str(tmp_path / "ok.npz"), validation_fraction=0.2)
    assert split.x_train.dtype == np.uint8 and split.x_train.max() > 200 and split.class_names == ["0", "1", "2", "3"]
    np.savez(tmp_path / "names.npz", x=x, y=np.arange(20) % 4, class_names=np.array(["a", "b", "c"]))
    with pytest.raises(UserError, match="label 3 is out of range for 3 class_names"):
        load_images(str(tmp_path / "names.npz"))
    np.savez(tmp_path / "negative.npz", x=x, y=np.arange(20) - 1)
    with pytest.raises(UserError, match="labels must be integers 0..K-1"):
        load_images(str(tmp_path / "negative.npz"))
    np.savez(tmp_path / "wrong.npz", images=x)
    with pytest.raises(UserError, match="needs arrays x and y"):
        load_images(str(tmp_path / "wrong.npz"))


def test_builtin_digits_are_real_images():
    split = load_images("builtin:digits")
    assert split.x_train.shape[1:] == (8, 8, 1) and len(split.x_train) + len(split.x_validation) == 1797
    assert split.x_train.max() == 255 and len(split.class_names) == 10


def test_tfds_mnist_with_mock_data(tmp_path):
    with mock_tfds("mnist", {"train": 6, "test": 6}, tmp_path, num_examples=6):
        split = load_images("tfds:mnist")
    assert split.x_train.shape == (6, 28, 28, 1) and split.class_names[:3] == ["0", "1", "2"]


def test_channel_conversion():
    rgb = np.zeros((1, 2, 2, 3), np.uint8)
    rgb[..., 0] = 255
    assert to_channels(rgb, 1)[0, 0, 0, 0] == 76  # 0.299 × 255
    assert to_channels(to_channels(rgb, 1), 3).shape == (1, 2, 2, 3)


# --- metrics --------------------------------------------------------------------------------------------

def test_metrics_match_hand_computed_values():
    matrix = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]])
    metrics = evaluation.per_class_metrics(matrix)
    np.testing.assert_allclose(metrics["precision"], [5 / 7, 3 / 4, 4 / 5])
    np.testing.assert_allclose(metrics["recall"], [5 / 6, 3 / 6, 4 / 4])
    f1_0 = 2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6)
    assert metrics["f1"][0] == pytest.approx(f1_0)
    assert metrics["macro"]["recall"] == pytest.approx((5 / 6 + 0.5 + 1) / 3)
    assert metrics["weighted"]["recall"] == pytest.approx(12 / 16)  # weighted recall equals accuracy
    pairs = evaluation.most_confused(matrix, ["a", "b", "c"])
    assert pairs[0] == {"true": "b", "predicted": "a", "count": 2} and len(pairs) == 3


def test_report_from_probabilities_and_top_k():
    labels = np.array([0, 1, 2, 2])
    probabilities = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.1, 0.3, 0.6], [0.3, 0.5, 0.2]])
    report = evaluation.classification_report(labels, probabilities, ["a", "b", "c"], top_k=2)
    assert report["accuracy"] == 0.5 and report["top_2_accuracy"] == 0.75
    binary = evaluation.classification_report(np.array([0, 1]), np.array([[0.6, 0.4], [0.3, 0.7]]), ["no", "yes"])
    assert not any(key.startswith("top_") for key in binary)  # top-2 of 2 classes is always 1: no such metric
    assert report["confusion_matrix"] == [[1, 0, 0], [1, 0, 0], [0, 1, 1]]
    assert report["per_class"][1] == {"class": "b", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


# --- the model through the CLI --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_run(tmp_path_factory, runner):
    root = make_class_folder(tmp_path_factory.mktemp("images") / "pets", per_class=10)
    out = tmp_path_factory.mktemp("runs") / "cnn"
    result = invoke(runner, "train", "cnn-classifier", "--data", root, "--out", out, "--quiet",
                    "--set", "data.validation_fraction=0.3", "--set", "model_args.channels=1", *tiny_cnn_args(),
                    "--set", "train.batch_size=4")
    assert result.exit_code == 0, result.output
    return out, root


@pytest.mark.slow
def test_train_writes_labels_and_evaluates(runner, image_run):
    out, _ = image_run
    labels = json.loads((out / "labels.json").read_text())
    assert labels == {"class_names": ["cat", "dog"], "image_size": 12, "channels": 1}
    result = invoke(runner, "evaluate", out)
    assert result.exit_code == 0, result.output
    for text in ("accuracy", "macro_f1", "per class", "confusion matrix"):
        assert text in result.output
    assert "top_2_accuracy" not in result.output  # 2 classes
    report = json.loads(invoke(runner, "evaluate", out, "--json").output)
    assert report["examples"] == 6 and sum(map(sum, report["confusion_matrix"])) == 6
    assert (out / "confusion_matrix.png").is_file()


def test_predict_images_and_folders(runner, image_run, tmp_path):
    out, root = image_run
    rows = json.loads(invoke(runner, "predict", out, root / "cat" / "0.bmp", root / "dog", "--top-k", 2, "--json").output)
    assert len(rows) == 11 and rows[0]["note"] == "converted RGB to grayscale"
    assert [p["class"] for p in rows[1]["predictions"]] in (["cat", "dog"], ["dog", "cat"])
    assert sum(p["probability"] for p in rows[1]["predictions"]) == pytest.approx(1.0, abs=1e-5)
    table = invoke(runner, "predict", out, root / "dog" / "1.png")
    assert table.exit_code == 0 and "dog" in table.output


def test_predict_errors(runner, image_run, trained_run, tmp_path):
    out, root = image_run
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert_user_error(invoke(runner, "predict", out, broken), "cannot decode image")
    assert_user_error(invoke(runner, "predict", trained_run, root / "dog" / "1.png"), "predict needs a classification model")
    assert_user_error(invoke(runner, "predict", out, tmp_path / "missing.png"), "does not exist")


def test_export_takes_raw_images(runner, image_run, tmp_path):
    out, _ = image_run
    result = invoke(runner, "export", out, "--format", "tflite", "--out", tmp_path / "cnn.tflite")
    assert result.exit_code == 0, result.output
    assert "max |diff|" in result.output


@pytest.mark.slow
def test_train_on_tfds_mock_mnist_and_presets(runner, tmp_path):
    with mock_tfds("mnist", {"train": 16, "test": 16}, tmp_path, num_examples=16):
        result = invoke(runner, "train", "cnn-classifier", "--data", "tfds:mnist", "--preset", "mnist", "--out", tmp_path / "m",
                        "--json", *tiny_cnn_args(), "--set", "runtime.jit_compile=true")  # the recipe's XLA path
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["epochs_completed"] == 1
    assert "image_size: 28" in (tmp_path / "m" / "config.yaml").read_text()
    assert_user_error(invoke(runner, "train", "cnn-classifier", "--preset", "imagenet"), "has no preset 'imagenet'; its presets: mnist, cifar")


@pytest.mark.slow
def test_train_on_an_idx_folder(runner, tmp_path):
    result = invoke(runner, "train", "cnn-classifier", "--data", mnist_folder(tmp_path / "mnist"), "--out", tmp_path / "r",
                    "--quiet", *tiny_cnn_args())
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "data.json").read_text())["validation_examples"] == 12
    report = json.loads(invoke(runner, "evaluate", tmp_path / "r", "--data", tmp_path / "mnist", "--json").output)
    assert report["data"] == f"test split of {tmp_path / 'mnist'}" and report["examples"] == 12


def test_evaluate_on_other_data(runner, image_run, tmp_path):
    out, root = image_run
    report = json.loads(invoke(runner, "evaluate", out, "--data", root, "--json").output)
    assert report["data"] == str(root) and report["examples"] == 20  # no test split: every image
    assert_user_error(invoke(runner, "evaluate", out, "--data", mnist_folder(tmp_path / "mnist")),
                      "has 10 classes but the model knows 2")


def test_resume_an_image_run(runner, image_run, tmp_path):
    import shutil

    out, _ = image_run
    copy = tmp_path / "more"
    shutil.copytree(out, copy)
    result = invoke(runner, "train", "--resume", copy, "--epochs", 2, "--quiet")
    assert result.exit_code == 0, result.output
    assert len(json.loads((copy / "history.json").read_text())["loss"]) == 2
    labels = json.loads((copy / "labels.json").read_text())
    labels["class_names"] = ["cat", "wolf"]
    (copy / "labels.json").write_text(json.dumps(labels))
    assert_user_error(invoke(runner, "train", "--resume", copy, "--epochs", 3), "classes differ from the run's labels.json")
