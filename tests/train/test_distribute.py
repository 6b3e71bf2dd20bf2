"""Scale-out: strategy choice, TPU initialisation, multi-worker on loopback, the whole zoo mirrored over 2 logical CPUs
with XLA, and on JAX with DataParallel over 2 host devices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kerasllm import compilation, distribute
from kerasllm.core.errors import UserError
from tests.conftest import need

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}
ONE = {"cluster": {"worker": ["a:1"]}, "task": {}}


# --- choosing a strategy -------------------------------------------------------------------

@pytest.mark.parametrize("facts, expected", [
    ({"tpu": True, "cluster": CLUSTER, "gpus": 4}, "tpu"),
    ({"tpu": False, "cluster": CLUSTER, "gpus": 4}, "multi-worker"),
    ({"tpu": False, "cluster": None, "gpus": 4}, "mirrored"),
    ({"tpu": False, "cluster": None, "gpus": 1}, "gpu"),
    ({"tpu": False, "cluster": None, "gpus": 0}, "cpu"),
    ({"tpu": False, "cluster": ONE, "gpus": 0}, "cpu"),  # a cluster of one
])
def test_auto_picks_tpu_then_workers_then_gpus_then_cpu(facts, expected):
    facts = dict(facts, workers=distribute.workers_in(facts.pop("cluster")))
    assert distribute.choose("auto", **facts) == expected
    assert distribute.choose("cpu", **facts) == "cpu"  # a name other than auto is taken as it is


def test_unknown_strategy_and_bad_tf_config_are_one_line():
    with pytest.raises(UserError, match="unknown strategy 'tpus'; use one of auto, cpu, gpu, mirrored, tpu, multi-worker"):
        distribute.choose("tpus", tpu=False, workers=1, gpus=0)
    with pytest.raises(UserError, match="TF_CONFIG is not valid JSON"):
        distribute.tf_config({"TF_CONFIG": "{cluster"})
    with pytest.raises(UserError, match='TF_CONFIG needs "cluster" and "task"'):
        distribute.tf_config({"TF_CONFIG": '{"cluster": {}}'})
    assert distribute.tf_config({}) is None
    cluster = {"worker": ["a:1", "b:2"]}
    with pytest.raises(UserError, match=r"TF_CONFIG's task index 7 is not one of the cluster's 2 worker task\(s\) \(0 to 1\)"):
        distribute.tf_config({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 7}})})
    with pytest.raises(UserError, match="TF_CONFIG's task type 'chief' is not in its cluster"):
        distribute.tf_config({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}})})


def test_the_chief_is_the_chief_task_or_worker_zero():
    assert distribute.chief_in(None)
    assert distribute.chief_in(CLUSTER)
    assert not distribute.chief_in({**CLUSTER, "task": {"type": "worker", "index": 1}})
    with_chief = {"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}
    assert not distribute.chief_in(with_chief)
    assert distribute.chief_in({**with_chief, "task": {"type": "chief", "index": 0}})


def test_the_loop_follows_the_strategy():
    import tensorflow as tf

    default = tf.distribute.get_strategy()
    assert distribute.loop_for("auto", default) == "fit"
    assert distribute.loop_for("custom", default) == "custom"

    class FakeMultiWorker:  # kind_of reads the class name, as for TF's CollectiveAllReduceStrategy
        pass

    FakeMultiWorker.__name__ = "MultiWorkerMirroredStrategy"
    assert distribute.loop_for("auto", FakeMultiWorker()) == "custom"
    with pytest.raises(UserError, match="Keras fit cannot train under the multi-worker strategy"):
        distribute.loop_for("fit", FakeMultiWorker())


def test_tpu_is_initialised_once_and_a_missing_tpu_is_one_line(monkeypatch):
    calls = []

    class FakeTF:
        class config:
            class experimental:
                connect_to_cluster = staticmethod(lambda resolver: calls.append(("connect", resolver)))

        class tpu:
            class experimental:
                initialize_tpu_system = staticmethod(lambda resolver: calls.append(("initialize", resolver)))

    FakeTF.config.experimental_connect_to_cluster = FakeTF.config.experimental.connect_to_cluster
    monkeypatch.setattr(distribute, "_TPU", {})
    first = distribute.initialize_tpu(lambda: "resolver", FakeTF)
    second = distribute.initialize_tpu(lambda: "another", FakeTF)
    assert first == second == "resolver" and calls == [("connect", "resolver"), ("initialize", "resolver")]

    def no_tpu():
        raise ValueError("Please provide a TPU Name to connect to.")

    monkeypatch.setattr(distribute, "_TPU", {})
    with pytest.raises(UserError, match="no TPU could be initialised .*Please provide a TPU Name.*--backend jax"):
        distribute.initialize_tpu(no_tpu, FakeTF)


def test_backend_must_be_set_before_keras_and_be_known():
    import keras  # noqa: F401  (the test process runs TensorFlow)

    distribute.set_backend("tensorflow")  # already so: nothing to do
    with pytest.raises(UserError, match="already imported with the tensorflow backend; start a new process with KERAS_BACKEND=jax"):
        distribute.set_backend("jax")
    with pytest.raises(UserError, match="unknown backend 'torch'"):
        distribute.set_backend("torch")


def test_precision_and_worker_timeout_are_validated():
    from kerasllm import catalog
    from kerasllm.core import config as config_lib

    spec = catalog.model("lstm-textgen")
    with pytest.raises(UserError, match="runtime.precision must be float32, mixed_bfloat16 or mixed_float16"):
        config_lib.resolve(spec, None, ["runtime.precision=fp8"])
    with pytest.raises(UserError, match="runtime.worker_timeout must be 0"):
        config_lib.resolve(spec, None, ["runtime.worker_timeout=-1"])


# --- the whole zoo, one step each ------------------------------------------------------------

@pytest.fixture(scope="module")
def zoo_runs(tmp_path_factory) -> dict:
    """Every registered model, one step each, on TensorFlow and on JAX, in four processes started at once (each
    backend's models in two halves): tracing is mostly single-threaded, so the two cores run them together faster.
    Returns {backend: [(stdout, stderr, returncode) of each half]}."""
    from tests.zoo_cases import matrix_names

    names = matrix_names()
    halves = [",".join(names[: len(names) // 2]), ",".join(names[len(names) // 2:])]
    modes = ["tensorflow"]
    try:
        need("jax")
        modes.append("jax")
    except pytest.skip.Exception:
        pass
    processes = {(mode, half): subprocess.Popen([sys.executable, "-m", "tests.zoo_step", str(tmp_path_factory.mktemp(mode)), mode,
                                                 half], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
                 for mode in modes for half in halves}
    found = {}
    for (mode, _), process in processes.items():
        found.setdefault(mode, []).append(process.communicate(timeout=900) + (process.returncode,))
    return found


def zoo_results(zoo_runs, mode: str) -> dict:
    if mode not in zoo_runs:
        need(mode)  # skipped where it is not installed; under CI=true a missing extra fails
    found = {}
    for stdout, stderr, returncode in zoo_runs[mode]:
        assert returncode == 0, stderr[-3000:]
        found.update(json.loads(stdout.strip().splitlines()[-1]))
    from tests.zoo_cases import matrix_names

    assert sorted(found) == matrix_names()
    for name, runs in found.items():
        for strategy, run in runs.items():
            assert "error" not in run, f"{name} {strategy}: {run['error']}"
    return found


@pytest.mark.slow
@pytest.mark.heavy  # the heavy tier (.ci/heavy): every model
def test_every_model_trains_with_xla_and_mirrored_over_two_logical_cpus(zoo_runs):
    """The TPU proxy (Keras fit compiled whole by XLA: static shapes, no py_function) and MirroredStrategy over 2
    logical CPUs at the same global batch."""
    for name, runs in zoo_results(zoo_runs, "tensorflow").items():
        one, two = runs["cpu"], runs["mirrored"]
        assert (one["replicas"], one["loop"], one["jit_compile"], one["steps"]) == (1, "fit", True, 1), name
        assert (two["replicas"], two["strategy"], two["loop"], two["global_batch"]) == (2, "MirroredStrategy: 2 CPUs", "fit", 8), name
        # after one step the validation loss matches one device; not to the last digit: batch normalisation and
        # token-weighted losses are computed per replica on half the batch
        assert two["after"] == pytest.approx(one["after"], rel=1e-3), name


@pytest.mark.slow
@pytest.mark.heavy  # every model: the heavy tier (.ci/heavy); the slow tier trains transformer-lm on JAX (tests/zoo_models)
def test_every_model_trains_on_jax_with_data_parallel_over_two_devices(zoo_runs):
    for name, runs in zoo_results(zoo_runs, "jax").items():
        one, two = runs["cpu"], runs["mirrored"]
        assert one["backend"] == two["backend"] == "jax" and (one["replicas"], two["replicas"]) == (1, 2), name
        assert two["strategy"] == "DataParallel (JAX): 2 CPUs" and two["global_batch"] == one["global_batch"] == 8, name
        assert two["first_loss"] == pytest.approx(one["first_loss"], rel=1e-5), name  # the same batch, the same weights


# --- two workers on 127.0.0.1 ---------------------------------------------------------------------

def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_worker(index, ports, run_dir, model, data, *extra):
    return subprocess.Popen([sys.executable, "-m", "tests.mw_worker", str(index), ",".join(map(str, ports)), str(run_dir), model,
                             str(data), *map(str, extra)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT))


def finish(process, timeout=300) -> dict:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def two_workers(run_dirs, model, data, *extra) -> list[dict]:
    ports = free_ports(2)
    workers = [start_worker(index, ports, run_dirs[index], model, data, *extra) for index in (0, 1)]
    return [finish(worker) for worker in workers]


def weights(path) -> list[np.ndarray]:
    with np.load(path) as saved:
        return [saved[key] for key in saved.files]


@pytest.fixture(scope="module")
def zoo_data(tmp_path_factory):
    from tests.zoo_cases import write_data

    folder = tmp_path_factory.mktemp("zoo")
    write_data(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("model", ["lstm-textgen", pytest.param("transformer-lm", marks=pytest.mark.heavy)])
def test_two_workers_stay_in_sync_and_match_one_process(zoo_data, tmp_path, model):
    chief_run, other_run = tmp_path / "chief", tmp_path / "other"
    summaries = two_workers([chief_run, other_run], model, zoo_data)
    for summary in summaries:
        assert (summary["strategy"], summary["replicas"], summary["global_batch"], summary["loop"], summary["steps"]) == \
               ("MultiWorkerMirroredStrategy: 2 replicas over the workers", 2, 8, "custom", 3)
    chief, other = weights(f"{chief_run}.weights-0.npz"), weights(f"{other_run}.weights-1.npz")
    assert all(np.array_equal(a, b) for a, b in zip(chief, other))  # identical, not just close
    assert (chief_run / "model.keras").is_file() and not other_run.exists()  # only the chief writes
    single = finish(start_worker(-1, [0], tmp_path / "single", model, zoo_data))
    assert single["global_batch"] == 8 and summaries[0]["loss"] == pytest.approx(single["loss"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.heavy  # the heavy tier (.ci/heavy): two more workers; the slow tier's two workers and kill -9 cover both halves
def test_two_workers_resume_from_the_chiefs_checkpoint(zoo_data, tmp_path):
    run = tmp_path / "run"
    two_workers([run, run], "lstm-textgen", zoo_data, 1)
    resumed = two_workers([run, run], "lstm-textgen", zoo_data, 2, "resume")
    assert resumed[0]["steps"] == resumed[1]["steps"] == 6
    # one process, the same way (the schedule is fixed by the first session: the extra epoch runs at its floor)
    finish(start_worker(-1, [0], tmp_path / "single", "lstm-textgen", zoo_data, 1))
    single = finish(start_worker(-1, [0], tmp_path / "single", "lstm-textgen", zoo_data, 2, "resume"))
    assert resumed[0]["loss"] == pytest.approx(single["loss"], rel=1e-4)


@pytest.mark.slow
def test_a_worker_that_dies_fails_the_job_with_one_line_in_bounded_time(zoo_data, tmp_path):
    ports = free_ports(2)
    dying = start_worker(1, ports, tmp_path / "run", "lstm-textgen", zoo_data, 1, "die")
    env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                                 "task": {"type": "worker", "index": 0}}))
    from tests.zoo_cases import cases

    sets = [arg for item in cases(zoo_data)["lstm-textgen"] for arg in ("--set", item)]
    chief = subprocess.run([sys.executable, "-m", "kerasllm", "train", "lstm-textgen", "--out", str(tmp_path / "run"), *sets,
                            "--set", "train.steps_per_epoch=3", "--set", "runtime.worker_timeout=20", "--quiet"],
                           capture_output=True, text=True, timeout=20 + 100, cwd=str(ROOT), env=env)
    dying.communicate(timeout=60)
    assert dying.returncode == 3
    assert chief.returncode == 2  # within subprocess.run's timeout: a hang fails the test
    last = chief.stderr.strip().splitlines()[-1]
    assert "the multi-worker job failed: worker 1 stopped responding" in last and "Traceback" not in chief.stderr


@pytest.mark.slow
def test_a_worker_that_never_starts_ends_the_others_with_one_line(zoo_data, tmp_path):
    """Joining the cluster has no timeout of its own (a worker once waited 392 s with runtime.worker_timeout=20)."""
    ports = free_ports(2)
    env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                                 "task": {"type": "worker", "index": 0}}))
    from tests.zoo_cases import cases

    sets = [arg for item in cases(zoo_data)["lstm-textgen"] for arg in ("--set", item)]
    alone = subprocess.run([sys.executable, "-m", "kerasllm", "train", "lstm-textgen", "--out", str(tmp_path / "run"), *sets,
                            "--set", "runtime.worker_timeout=5", "--quiet"],
                           capture_output=True, text=True, timeout=5 + 60, cwd=str(ROOT), env=env)  # hangs: the test fails
    assert alone.returncode == 2  # a one-line error's status, though the join held the GIL (interrupts.deadline)
    assert alone.stderr.strip().splitlines()[-1] == (
        f"error: the multi-worker job did not start: worker 1 (127.0.0.1:{ports[1]}) did not join within runtime.worker_timeout=5 s; "
        "start every worker with the same TF_CONFIG cluster (each with its own task index), or raise runtime.worker_timeout")
    assert not (tmp_path / "run").exists()


# --- precision -------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("model, precision, loop", [("transformer-lm", "mixed_bfloat16", "fit"),
                                                    ("lstm-textgen", "mixed_float16", "custom")])
def test_mixed_precision_keeps_logits_and_loss_in_float32(zoo_data, tmp_path, model, precision, loop):
    import keras

    from kerasllm import catalog
    from kerasllm.core import config as config_lib
    from kerasllm.train import trainer as training
    from tests.zoo_cases import cases

    config = config_lib.resolve(catalog.model(model), None, [*cases(zoo_data)[model], "train.steps_per_epoch=2",
                                                             f"runtime.precision={precision}", f"runtime.loop={loop}",
                                                             "runtime.jit_compile=false"])
    summary = training.train(config, tmp_path / "run", progress="quiet")
    assert summary["precision"] == precision and np.isfinite(summary["after_training"]["loss"])
    assert keras.mixed_precision.global_policy().name == "float32"  # set only while the model is built
    saved = keras.models.load_model(tmp_path / "run" / "model.keras", compile=False)
    compute = {layer.dtype_policy.compute_dtype for layer in saved.layers if layer.weights}
    assert precision.removeprefix("mixed_") in compute  # the layers compute in 16 bits ...
    assert keras.backend.standardize_dtype(saved.outputs[0].dtype) == "float32"  # ... the logits are float32


def test_strategy_tpu_without_a_tpu_is_one_line(runner, corpus_file, tmp_path):
    from tests.commands.test_cli import assert_user_error, invoke
    from tests.conftest import tiny_args

    assert_user_error(invoke(runner, "train", "lstm-textgen", "--data", corpus_file, "--strategy", "tpu", "--out", tmp_path / "r",
                             *tiny_args()), "--strategy tpu but this machine shows no TPU")
    assert not (tmp_path / "r").exists()


def test_in_memory_pipelines_shard_by_data_across_workers():
    import tensorflow as tf

    from kerasllm.data import pipeline

    dataset = pipeline.array_dataset(np.arange(8), np.zeros(8, np.int32), 4, shuffle_seed=0, steps_per_epoch=2)
    assert dataset.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA
    assert distribute.shard_policy(file_backed=True) == tf.data.experimental.AutoShardPolicy.FILE


def test_the_xla_cpu_default_is_for_tensorflow_only(monkeypatch):
    monkeypatch.setenv("KERASLLM_COMPILATION_CACHE", "0")  # (the cache's own test is below)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    compilation.set_xla_defaults("jax")  # jaxlib's XLA rejects the old-runtime flag
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=false"
    compilation.set_xla_defaults("tensorflow")
    assert os.environ["XLA_FLAGS"] == f"--xla_cpu_multi_thread_eigen=false {compilation.xla_cpu_defaults()}"
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_thunk_runtime=true")
    compilation.set_xla_defaults("tensorflow")  # the user's own setting wins
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_use_thunk_runtime=true"


def test_the_strategy_is_named_in_words():
    import tensorflow as tf

    assert distribute.describe(tf.distribute.get_strategy()) == "1 device (CPU)"


def test_compiled_programs_are_kept_per_cpu_kind_unless_turned_off(monkeypatch, tmp_path):
    """The persistent XLA compilation cache: TensorFlow's flag (or JAX's variable) names a folder under kerasllm's cache
    home, one per backend version and CPU kind; a user's own folder wins; KERASLLM_COMPILATION_CACHE=0 turns it off."""
    for name in ("TF_XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR", "KERASLLM_COMPILATION_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KERASLLM_CACHE_DIR", str(tmp_path / "cache"))
    compilation.set_xla_defaults("tensorflow")
    folder = compilation.compilation_cache_dir("tensorflow")
    assert folder.parent == tmp_path / "cache" / "xla" and folder.is_dir()
    assert folder.name.startswith("tensorflow-") and folder.name.endswith(compilation.cpu_fingerprint())
    assert os.environ["TF_XLA_FLAGS"] == f"--tf_xla_persistent_cache_directory={folder}"
    compilation.set_xla_defaults("jax")
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(compilation.compilation_cache_dir("jax")) != str(folder)
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_persistent_cache_directory=/mine")
    compilation.set_xla_defaults("tensorflow")
    assert os.environ["TF_XLA_FLAGS"] == "--tf_xla_persistent_cache_directory=/mine"
    monkeypatch.delenv("TF_XLA_FLAGS")
    monkeypatch.setenv("KERASLLM_COMPILATION_CACHE", "0")
    compilation.set_xla_defaults("tensorflow")
    assert "TF_XLA_FLAGS" not in os.environ and compilation.compilation_cache_dir("tensorflow") is None
    assert compilation.cache_home({"XDG_CACHE_HOME": "/x"}) == Path("/x/kerasllm")


@pytest.mark.parametrize("vendor, expected", [
    ("GenuineIntel", "--xla_cpu_use_thunk_runtime=false"),
    ("AuthenticAMD", "--xla_cpu_use_thunk_runtime=false"),  # measured: no faster option on AMD EPYC
    ("", "--xla_cpu_use_thunk_runtime=false"),  # an unknown kind gets the Intel flags
])
def test_each_cpu_kind_takes_its_measured_xla_flags(monkeypatch, vendor, expected):
    monkeypatch.setenv("KERASLLM_COMPILATION_CACHE", "0")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(compilation, "cpu_vendor", lambda: vendor)
    compilation.set_xla_defaults("tensorflow")
    assert os.environ["XLA_FLAGS"] == expected
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_onednn=false")  # the user's own value of one flag wins, the others come
    compilation.set_xla_defaults("tensorflow")
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_use_onednn=false --xla_cpu_use_thunk_runtime=false"


def test_jax_imported_already_gets_the_cache_folder_in_its_config(monkeypatch, tmp_path):
    """JAX reads JAX_COMPILATION_CACHE_DIR once, as it loads; a command that imported it first still gets the cache."""
    jax = pytest.importorskip("jax")
    for name in ("JAX_COMPILATION_CACHE_DIR", "KERASLLM_COMPILATION_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KERASLLM_CACHE_DIR", str(tmp_path))
    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    try:
        compilation.set_xla_defaults("jax")
        assert jax.config.jax_compilation_cache_dir == str(compilation.compilation_cache_dir("jax"))
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
