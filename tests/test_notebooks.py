"""Every notebook in notebooks/ runs top to bottom on CPU with tiny parameters, as papermill would run it: a cell
with the tiny values is inserted after the cell tagged `parameters`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import need

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# the heavy tier (.ci/heavy) runs all four notebooks; the fast tier checks that each calls kerasllm only
EXECUTED = NOTEBOOKS
TINY_LM = "--set model_args.num_layers=1 --set model_args.num_heads=2 --set model_args.hidden_dim=16 " \
          "--set data.sequence_length=16 --set train.batch_size=8 --set train.steps_per_epoch=3 --set train.sample_length=20 " \
          "--set runtime.steps_per_execution=1"


def tiny_parameters(name: str, data: Path) -> dict:
    """Values for the notebook's parameters that run on CPU in seconds, on data `zoo_cases.write_data` wrote. Three
    notebooks take their TPU branch (`RUNTIME = "tpu"`): Keras on JAX with DataParallel, here over 2 host devices."""
    return {
        "01_quickstart": {"DATA": str(data / "corpus.txt"), "EPOCHS": 1, "RUNTIME": "tpu",
                          "EXTRA": "--set model_args.units=16 --set model_args.embedding_dim=8 --set data.sequence_length=16 "
                                   "--set train.batch_size=8 --set train.steps_per_epoch=3 --set train.sample_length=20"},
        "02_tpu_transformer_lm": {"DATA": str(data / "corpus.txt"), "PRESET": "tiny", "EPOCHS": 1, "RUNTIME": "tpu",
                                  "EXTRA": TINY_LM + " --set model_args.max_sequence_length=16"},
        "03_finetune": {"BASE": str(data / "presets" / "bert"), "DATA": str(data / "toy"), "RANK": 2, "EPOCHS": 1, "RUNTIME": "cpu",
                        "EXTRA": "--set data.sequence_length=16 --set train.batch_size=8 --set train.steps_per_epoch=2"},
        "04_translate": {"DATA": str(data / "pairs.tsv"), "PRESET": "tiny", "EPOCHS": 1, "RUNTIME": "tpu",
                         "EXTRA": TINY_LM.replace("data.sequence_length=16", "data.sequence_length=12") + " --set model_args.intermediate_dim=32 "
                                  "--set data.tokenizer=word --set data.vocab_size=60 --set seq2seq.target_length=12"},
    }[name]


def test_every_notebook_has_a_badge_an_install_cell_runtime_detection_and_parameters():
    import nbformat

    assert [path.stem for path in NOTEBOOKS] == ["01_quickstart", "02_tpu_transformer_lm", "03_finetune", "04_translate"]
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        sources = [cell.source for cell in notebook.cells]
        assert f"colab.research.google.com/github/kerasllm/kerasllm/blob/main/notebooks/{path.name}" in sources[0], path.name
        assert any("pip\", \"install\"" in s for s in sources) and any("RUNTIME =" in s for s in sources), path.name
        assert sum("parameters" in cell.metadata.get("tags", []) for cell in notebook.cells) == 1, path.name
        code = "\n".join(sources)
        assert 'BACKEND = "jax" if RUNTIME == "tpu"' in code, path.name
        assert "--backend {BACKEND} train " in code or "--backend {BACKEND} finetune " in code, path.name
        assert "tensorflow-cpu==" in code and "drive.mount" in code and "train --resume {RUN}" in code, path.name
        assert sum(len(s.splitlines()) for s in sources) < 300, path.name
        assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), f"{path.name}: clear outputs"


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict:
    """Every notebook run at once, each in its own process (their `kerasllm` commands are mostly single-threaded
    tracing, so two cores run them nearly twice as fast together): {name: (returncode, stderr, executed notebook)}."""
    need("nbclient")
    need("jax")  # 02 runs the JAX path
    from tests.zoo_cases import write_data

    data = tmp_path_factory.mktemp("notebook-data")
    write_data(data)
    folders = {path.stem: tmp_path_factory.mktemp(path.stem) for path in EXECUTED}
    two_devices = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")  # JAX's "TPU cores", on the CPU
    processes = {path.stem: subprocess.Popen([sys.executable, "-m", "tests.notebook_run", str(path),
                                              json.dumps(tiny_parameters(path.stem, data)), str(folders[path.stem])],
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT), env=two_devices)
                 for path in EXECUTED}
    found = {}
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=900)
        found[name] = (process.returncode, stderr, folders[name])
    return found


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.parametrize("name", [p.stem for p in EXECUTED])
def test_notebook_runs_with_tiny_parameters(executed, name):
    import nbformat

    returncode, stderr, folder = executed[name]
    assert returncode == 0, stderr[-4000:]
    notebook = nbformat.read(folder / "executed.ipynb", as_version=4)
    outputs = "\n".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", [])
                        if output.get("output_type") == "stream")
    assert "error:" not in outputs.lower() and "Traceback" not in outputs, outputs[-3000:]
    images = sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))
    assert images >= 1  # the curves, inline
    (run,) = [run for run in (folder / "runs").iterdir() if (run / "model.keras").is_file()]  # RUN, in the notebook's folder
    metrics = json.loads((run / "metrics.json").read_text())
    runtime = tiny_parameters(name, folder)["RUNTIME"]
    assert f"runtime: {runtime}; backend: {'jax' if runtime == 'tpu' else 'tensorflow'}" in outputs
    if runtime == "tpu":  # the TPU branch: Keras on JAX, DataParallel over every device the runtime has
        assert metrics["backend"] == "jax" and metrics["replicas"] == 2, metrics
