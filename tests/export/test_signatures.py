"""SavedModel signatures that take raw inputs, called from a fresh process with `tf.saved_model.load` alone and compared
with kerasllm's own output on real samples: `generate` (transformer-lm, lstm-textgen), `classify` on text
(transformer-classifier) and on encoded images (cnn-classifier)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from kerasllm import runs
from kerasllm.export import saving
from tests.commands.test_cli import invoke
from tests.tasks.test_images import make_class_folder, tiny_cnn_args
from tests.tasks.test_text_classification import TINY_TRANSFORMER, write_sst

FRESH = """
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401  the text classifier's WordPiece ops
calls = json.loads(sys.argv[1])
found = {}
for name, (folder, signature, inputs, steps) in calls.items():
    loaded = tf.saved_model.load(folder)
    if signature == "generate":
        texts = loaded.generate(tf.constant(inputs), tf.constant(steps)).numpy()
        found[name] = [text.decode("utf-8") for text in texts]
    else:
        values = [open(path, "rb").read() for path in inputs] if name == "image" else inputs
        result = loaded.classify(tf.constant(values))
        found[name] = {"label": [label.decode() for label in result["label"].numpy()],
                       "probabilities": result["probabilities"].numpy().tolist()}
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def classifier_runs(runner, tmp_path_factory):
    folder = tmp_path_factory.mktemp("classifiers")
    sst = write_sst(folder)
    text = folder / "text"
    result = invoke(runner, "train", "transformer-classifier", "--data", sst, "--out", text, "--quiet", "--epochs", "1", *TINY_TRANSFORMER)
    assert result.exit_code == 0, result.output
    images, cnn = make_class_folder(folder / "pets", per_class=10), folder / "cnn"
    result = invoke(runner, "train", "cnn-classifier", "--data", images, "--out", cnn, "--quiet", "--set", "data.validation_fraction=0.3",
                    "--set", "model_args.channels=1", *tiny_cnn_args(), "--set", "train.batch_size=4")
    assert result.exit_code == 0, result.output
    return text, cnn, sst, images


@pytest.mark.slow
def test_the_signatures_answer_in_a_fresh_process_as_kerasllm_does(runner, lm_run, trained_run, classifier_runs, tmp_path):
    text_run, cnn_run, sst, images = classifier_runs
    calls, expected = {}, {}
    prompts = ["The ", "It is ", "a"]
    for name, run_dir in (("transformer-lm", lm_run), ("lstm-textgen", trained_run)):
        exported = invoke(runner, "export", run_dir, "--format", "savedmodel", "--out", tmp_path / name)
        assert exported.exit_code == 0 and "signature `generate`: same outputs as `kerasllm`" in exported.output, exported.output
        run = runs.load_run(run_dir)
        expected[name] = run.task.generate(saving.load_model(run_dir), run, prompts, max_length=8, temperature=0.0)
        calls[name] = [str(tmp_path / name), "generate", prompts, 8]
    texts = [line.partition(" ")[2] for line in sst.with_suffix(".test").read_text().splitlines()[:6]]
    image_files = sorted(str(path) for path in images.rglob("*.png"))[:4]
    for name, run_dir, inputs in (("text", text_run, texts), ("image", cnn_run, image_files)):
        exported = invoke(runner, "export", run_dir, "--format", "savedmodel", "--out", tmp_path / name)
        assert exported.exit_code == 0 and "signature `classify`: same outputs as `kerasllm`" in exported.output, exported.output
        run = runs.load_run(run_dir)
        predicted = run.task.predict(saving.load_model(run_dir), run, inputs, top_k=10)
        names = run.artifacts["labels"].class_names
        expected[name] = {"label": [row["predictions"][0]["class"] for row in predicted],
                          "probabilities": [[next(p["probability"] for p in row["predictions"] if p["class"] == c) for c in names]
                                            for row in predicted]}
        calls[name] = [str(tmp_path / name), "classify", inputs, 0]
    done = subprocess.run([sys.executable, "-c", FRESH, json.dumps(calls)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("transformer-lm", "lstm-textgen"):
        assert found[name] == expected[name], name
    for name in ("text", "image"):
        assert found[name]["label"] == expected[name]["label"], name
        np.testing.assert_allclose(found[name]["probabilities"], expected[name]["probabilities"], atol=1e-4)
    assert "loaded.generate(tf.constant(" in (tmp_path / "README.md").read_text()  # the folder's usage snippet calls them
    assert 'found = loaded.classify(tf.constant([' in (tmp_path / "README.md").read_text()
