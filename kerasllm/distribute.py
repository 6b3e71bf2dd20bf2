"""From a strategy name to a distribution engine, and which process writes files.

One config runs unchanged on a laptop CPU, a GPU box, a TPU and several machines; only
`--strategy` (default `auto`) and `--backend` change. Beyond one process we use existing
engines only: tf.distribute (MultiWorkerMirroredStrategy, TPUStrategy) on TensorFlow, and
`keras.distribution.DataParallel` (with `jax.distributed` across hosts) on JAX.

`auto` picks, in this order: a TPU, `TF_CONFIG` (several workers), several GPUs
(mirrored), one GPU, the CPU. `choose()` makes that decision from facts passed in, so it
is tested without the hardware.

`train.batch_size` is per replica: the global batch is `batch_size × replicas`, and the
input pipeline is batched at the global size (`tf.distribute` and `DataParallel` split
each global batch across the replicas).

On a single device the default strategy is used: `OneDeviceStrategy` gives every dataset a
per-device iterator whose tf.data autotune thread made `fit` sit idle for 8-60 s after its
last step (its destructor waits for the thread's timed sleep); the default strategy has none.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path

from kerasllm.core import interrupts, words
from kerasllm.core.errors import UserError
from kerasllm.core.validation import PRECISIONS, STRATEGIES

# Lazy imports: TensorFlow, Keras and JAX are imported inside functions: `kerasllm --help` and `kerasllm list` load
# this module and must not load them, and the backend must be set before Keras loads.

__all__ = ["PRECISIONS", "STRATEGIES"]  # the names live in core.validation; here is what they mean
BACKENDS = ("tensorflow", "jax")
# Where Keras `fit` cannot run the step (keras#20585 for MultiWorkerMirroredStrategy, keras#19448 on TPU VMs).
CUSTOM_LOOP_ONLY = ("multi-worker", "tpu")


def tf_config(env: dict | None = None) -> dict | None:
    """The parsed `TF_CONFIG` (the cluster of a multi-worker job), or None when it is not set."""
    env = os.environ if env is None else env
    text = env.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"TF_CONFIG is not valid JSON ({error.msg}); set it to "
                        '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}} or unset it') from error
    if not isinstance(value, dict) or not isinstance(value.get("cluster"), dict) or not isinstance(value.get("task"), dict):
        raise UserError('TF_CONFIG needs "cluster" and "task"; e.g. '
                        '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}')
    check_task(value["cluster"], value["task"])
    return value


def check_task(cluster: dict, task: dict) -> None:
    """TF_CONFIG's task must be one of its cluster's: a type the cluster lists, an index below that job's count."""
    kind, index = task.get("type", "worker"), task.get("index", 0)
    jobs = {name: hosts for name, hosts in cluster.items() if isinstance(hosts, list)}
    if kind not in jobs:
        raise UserError(f"TF_CONFIG's task type {kind!r} is not in its cluster (jobs: {', '.join(jobs) or 'none'}); "
                        "set task.type to one of them")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(jobs[kind]):
        raise UserError(f"TF_CONFIG's task index {index!r} is not one of the cluster's {len(jobs[kind])} {kind} task(s) "
                        f"(0 to {len(jobs[kind]) - 1}); give each process its own index")


def join_timeout_message(config: dict, timeout: float) -> str:
    """What a worker says when the cluster has not come together within runtime.worker_timeout."""
    me = (config["task"].get("type", "worker"), config["task"].get("index", 0))
    others = [f"{job} {index} ({address})" for job, hosts in config["cluster"].items() if isinstance(hosts, list)
              for index, address in enumerate(hosts) if (job, index) != me]
    return (f"the multi-worker job did not start: {', '.join(others)} did not join within runtime.worker_timeout="
            f"{timeout:g} s; start every worker with the same TF_CONFIG cluster (each with its own task index), or raise "
            "runtime.worker_timeout")


def tpu_present(env: dict | None = None) -> bool:
    """A TPU VM or Colab TPU runtime: the accelerator device files or the runtime's variables."""
    env = os.environ if env is None else env
    return bool(list(Path("/dev").glob("accel*")) or list(Path("/dev").glob("vfio/[0-9]*"))) \
        or any(key in env for key in ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE"))


def chief_in(config: dict | None) -> bool:
    """Whether the task `config` (a TF_CONFIG) describes is the one that writes: the `chief`, or worker 0 when the
    cluster has no chief. No TF_CONFIG: a single process, always the chief."""
    if not config:
        return True
    task = config.get("task", {})
    kind, index = task.get("type"), int(task.get("index", 0))
    if kind in (None, "chief"):
        return True
    return kind == "worker" and index == 0 and "chief" not in config.get("cluster", {})


def workers_in(config: dict | None) -> int:
    """How many processes a TF_CONFIG's cluster names (1 without one)."""
    return sum(len(tasks) for tasks in config.get("cluster", {}).values()) if config else 1


def choose(name: str, *, tpu: bool, workers: int, gpus: int) -> str:
    """The concrete strategy for a name: `auto` becomes tpu, multi-worker, mirrored, gpu or cpu, in that order."""
    if name not in STRATEGIES:
        raise UserError(f"unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}")
    if name != "auto":
        return name
    if tpu:
        return "tpu"
    if workers > 1:
        return "multi-worker"
    if gpus > 1:
        return "mirrored"
    return "gpu" if gpus == 1 else "cpu"


def set_backend(name: str | None) -> None:
    """Set the Keras backend for this process: must happen before Keras is imported."""
    if not name:
        return
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != name:
            raise UserError(f"Keras was already imported with the {keras.backend.backend()} backend; "
                            f"start a new process with KERAS_BACKEND={name}")
        return
    if name == "jax":
        try:
            import jax  # noqa: F401
        except ImportError as error:
            raise UserError("--backend jax needs JAX; install it with `pip install 'kerasllm[jax]'`") from error
    os.environ["KERAS_BACKEND"] = name


def backend() -> str:
    import keras

    return keras.backend.backend()


# --- TPU ---------------------------------------------------------------------------------

_TPU: dict = {}


def initialize_tpu(resolver_factory=None, tf=None):
    """Connect to the TPU and initialise it, once per process (a second initialisation wipes its memory).

    Returns the cluster resolver. `resolver_factory` and `tf` are injectable for tests.
    """
    if "resolver" in _TPU:
        return _TPU["resolver"]
    if tf is None:
        import tensorflow as tf
    factory = resolver_factory or tf.distribute.cluster_resolver.TPUClusterResolver
    try:
        resolver = factory()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError) as error:
        raise UserError(f"--strategy tpu but no TPU could be initialised ({str(error).splitlines()[0][:160]}); on a Colab "
                        "TPU runtime use --backend jax (its TensorFlow has no TPU support), else --strategy auto") from error
    _TPU["resolver"] = resolver
    return resolver


# --- TensorFlow strategies ---------------------------------------------------------------

_MADE: dict = {}


def _tf_strategy(kind: str, worker_timeout: float):
    """One strategy per kind per process: a second MirroredStrategy's collectives clashed with the first's
    (shape mismatches), a second multi-worker one cannot be configured, a TPU is initialised once."""
    if kind not in _MADE:
        _MADE[kind] = _new_tf_strategy(kind, worker_timeout)
    return _MADE[kind]


def _new_tf_strategy(kind: str, worker_timeout: float):
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")  # logical devices would start the runtime: too early for multi-worker
    if kind == "gpu" and not gpus:
        raise UserError("--strategy gpu but TensorFlow sees no GPU; use --strategy cpu or auto")
    if kind == "tpu":
        if not tpu_present():  # without this, the resolver may wait on a metadata server
            raise UserError("--strategy tpu but this machine shows no TPU (no /dev/accel*, TPU_NAME or COLAB_TPU_ADDR); "
                            "use --strategy auto")
        return tf.distribute.TPUStrategy(initialize_tpu())
    if kind == "multi-worker":
        if tf_config() is None:
            raise UserError("--strategy multi-worker needs TF_CONFIG naming the workers and this process's task; "
                            "see the README's 'Several machines' section")
        # a collective that waits longer than this for a peer fails: a dead worker ends the job instead of hanging it
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=worker_timeout or None)
        # joining the cluster waits for every worker with no timeout of its own (392 s were seen with a 20 s timeout)
        with interrupts.deadline(worker_timeout, join_timeout_message(tf_config(), worker_timeout)):
            return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "cpu" and gpus:
        return tf.distribute.OneDeviceStrategy("/cpu:0")  # keep work off the GPU that TF would pick
    return tf.distribute.get_strategy()  # one device: the default strategy (no per-device iterator)


# --- JAX ---------------------------------------------------------------------------------

class JaxDataParallel:
    """The JAX backend's engine: `keras.distribution.DataParallel` over the devices, set for the process.

    It offers what the trainer uses of a tf.distribute strategy (`scope`, `num_replicas_in_sync`).
    Variables are replicated; `fit` splits each global batch across the devices and averages the
    gradients. `multi-worker` first joins the other hosts with `jax.distributed.initialize()`.
    """

    def __init__(self, kind: str):
        import jax
        import keras

        if kind == "multi-worker":
            try:
                jax.distributed.initialize()  # coordinator, process count and id from the environment or the TPU pod
            except (ValueError, RuntimeError) as error:
                raise UserError(f"jax.distributed.initialize() failed ({str(error).splitlines()[0][:160]}); set "
                                "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID on every host") from error
        platform = {"tpu": "tpu", "gpu": "gpu", "mirrored": None, "cpu": "cpu"}.get(kind)
        try:
            devices = jax.devices(platform) if platform else jax.devices()
        except RuntimeError as error:
            raise UserError(f"--strategy {kind} but JAX sees no {platform.upper()} ({str(error).splitlines()[0][:120]}); "
                            "use --strategy auto") from error
        if kind in ("cpu", "gpu"):
            devices = devices[:1]
        self.kind, self.devices = kind, devices
        self.distribution = keras.distribution.DataParallel(devices=devices) if len(devices) > 1 else None
        keras.distribution.set_distribution(self.distribution)
        self.num_replicas_in_sync = len(devices)
        self.chief = jax.process_index() == 0

    def scope(self):
        return self.distribution.scope() if self.distribution else contextlib.nullcontext()


def jax_kind(name: str) -> str:
    import jax

    devices = jax.devices()
    platforms = {device.platform for device in devices}
    workers = 2 if os.environ.get("JAX_COORDINATOR_ADDRESS") else 1  # several processes join through a coordinator
    kind = choose(name, tpu="tpu" in platforms, workers=workers, gpus=len(devices) if "gpu" in platforms else 0)
    return "mirrored" if name == "auto" and kind == "cpu" and len(devices) > 1 else kind  # e.g. forced host devices


# --- the one entry point -----------------------------------------------------------------

def get_strategy(name: str = "auto", worker_timeout: float = 0.0):
    """A tf.distribute strategy (TensorFlow backend) or a `JaxDataParallel` (JAX backend) for `name`."""
    if backend() == "jax":
        return JaxDataParallel(jax_kind(name))
    import tensorflow as tf

    kind = choose(name, tpu=tpu_present(), workers=workers_in(tf_config()), gpus=len(tf.config.list_physical_devices("GPU")))
    return _tf_strategy(kind, worker_timeout)


def kind_of(strategy) -> str:
    """`tpu`, `multi-worker`, `mirrored` or `single` for a strategy `get_strategy` made."""
    if isinstance(strategy, JaxDataParallel):
        return strategy.kind if strategy.num_replicas_in_sync > 1 or strategy.kind in ("tpu", "multi-worker") else "single"
    name = type(strategy).__name__
    if name.startswith("TPUStrategy"):
        return "tpu"
    if name.startswith("MultiWorkerMirrored") or name.startswith("CollectiveAllReduce"):
        return "multi-worker"
    return "mirrored" if name == "MirroredStrategy" else "single"




def device_kind(strategy=None) -> str:
    """What the replicas run on (without a strategy, what the backend computes on): CPU, GPU or TPU."""
    if isinstance(strategy, JaxDataParallel) or (strategy is None and backend() == "jax"):
        import jax

        return jax.devices()[0].platform.upper()
    kind = kind_of(strategy)
    if kind == "tpu":
        return "TPU"
    if kind in ("mirrored", "multi-worker"):  # it may span the CPUs even where there is a GPU (tests: 2 logical CPUs)
        return "GPU" if all("GPU" in str(name).upper() for name in strategy.extended.worker_devices) else "CPU"
    import tensorflow as tf

    return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"


def describe(strategy, replicas: int | None = None) -> str:
    """The strategy in words, for people: `1 device (CPU)`, `MirroredStrategy: 2 GPUs`, `DataParallel (JAX): 8 TPUs`."""
    replicas = replicas or strategy.num_replicas_in_sync
    kind, device = kind_of(strategy), device_kind(strategy)
    if isinstance(strategy, JaxDataParallel):
        return f"DataParallel (JAX): {words.count(replicas, device)}" if strategy.distribution else f"1 device ({device}, JAX)"
    if kind == "multi-worker":
        return f"MultiWorkerMirroredStrategy: {words.count(replicas, 'replica')} over the workers"
    if kind == "tpu":
        return f"TPUStrategy: {words.count(replicas, 'TPU core')}"
    if kind == "mirrored":
        return f"MirroredStrategy: {words.count(replicas, device)}"
    return f"1 device ({device})"


def needs_full_batches(strategy) -> bool:
    """JAX's DataParallel shards every batch evenly over the devices, so a shorter last batch cannot run: validation
    then leaves out the last (global batch − 1) examples at most. tf.distribute splits short batches itself."""
    return isinstance(strategy, JaxDataParallel) and strategy.num_replicas_in_sync > 1


def is_chief(strategy=None) -> bool:
    """True for the one process that writes checkpoints, metrics and the model.

    A single process is always the chief. Under multi-worker strategies it is the
    `chief` task, or worker 0 when the cluster has no chief; on JAX, process 0.
    """
    if isinstance(strategy, JaxDataParallel):
        return strategy.chief
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or kind_of(strategy) != "multi-worker":
        return True
    return chief_in({"cluster": resolver.cluster_spec().as_dict(),
                     "task": {"type": resolver.task_type, "index": resolver.task_id}})


def loop_for(requested: str, strategy, jit_compile: bool = False) -> str:
    """The training loop to use. `auto` is `fit`, except where only the custom loop runs: multi-worker and TPU on
    TensorFlow (keras#20585, keras#19448), and XLA over several local devices (Keras compiles fit's whole
    `strategy.run` step, whose replicas' variables live on other devices; the custom loop compiles each replica's
    step). The custom loop is a `tf.function` step, so it is refused on JAX."""
    jax = isinstance(strategy, JaxDataParallel)
    if jax:
        if requested == "custom":
            raise UserError("runtime.loop=custom is a TensorFlow loop; on the JAX backend use runtime.loop=auto (Keras fit)")
        return "fit"
    kind = kind_of(strategy)
    needs_custom = kind in CUSTOM_LOOP_ONLY or (kind == "mirrored" and jit_compile)
    if requested == "auto":
        return "custom" if needs_custom else "fit"
    if requested == "fit" and needs_custom:
        why = "with runtime.jit_compile=true over several devices" if kind == "mirrored" else f"under the {kind} strategy"
        raise UserError(f"Keras fit cannot train {why}; use runtime.loop=auto (the custom loop)"
                        + (" or runtime.jit_compile=false" if kind == "mirrored" else ""))
    return requested


@contextlib.contextmanager
def peer_failures(strategy, worker_timeout: float):
    """Under multi-worker, a worker that died or stopped answering (TensorFlow's heartbeat check, or a collective
    past `worker_timeout`) becomes one clear error instead of a traceback (or a hang)."""
    try:
        yield
    except Exception as error:
        if kind_of(strategy) != "multi-worker":
            raise
        import tensorflow as tf

        peer_errors = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError, tf.errors.CancelledError)
        if not isinstance(error, peer_errors):
            raise
        detail = " ".join(str(error).split())
        tasks = sorted(set(re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", detail.partition("unhealthy")[2])))
        who = ", ".join(f"{job} {index}" for job, index in tasks) or "another worker"
        raise UserError(f"the multi-worker job failed: {who} stopped responding ({type(error).__name__}); start every "
                        f"worker again, with `--resume RUN` once a checkpoint exists (runtime.worker_timeout is "
                        f"{worker_timeout:g} s)") from error


def shard_policy(file_backed: bool):
    """tf.data auto-sharding across workers: FILE splits a file-backed source's files among workers, DATA has every
    worker read all and keep its part (what suits in-memory arrays)."""
    import tensorflow as tf

    policy = tf.data.experimental.AutoShardPolicy
    return policy.FILE if file_backed else policy.DATA
