"""The model a run trains: built inside the strategy's scope with the run's precision, compiled with the task's loss
and metrics and the run's optimizer; the seeds set; a new run's folder written."""

from __future__ import annotations

from pathlib import Path

import keras

from kerasllm.core import files
from kerasllm.core.config import RunConfig, TrainConfig
from kerasllm.train import optimizers

# Keras is imported at the top: only the trainer imports this module, once Keras has loaded.


def seed_everything(config: RunConfig) -> None:
    keras.utils.set_random_seed(config.train.seed)
    if config.runtime.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def compile_model(model, spec, task, config: RunConfig, schedule_steps: int, train: TrainConfig | None = None) -> None:
    metrics = {"weighted_metrics" if task.weighted_metrics else "metrics": task.metrics(spec)}
    model.compile(
        optimizer=optimizers.make_optimizer(train or config.train, schedule_steps),
        loss=task.loss(spec, config),
        **metrics,
        jit_compile=config.runtime.jit_compile,
        steps_per_execution=config.runtime.steps_per_execution,
    )


def float32_outputs(model):
    """The model with float32 outputs: under a mixed precision policy the last layers compute in 16 bits, but logits
    (and so the loss and the softmax) stay float32. A model whose outputs already are float32 is returned as it is."""
    outputs = model.outputs if isinstance(model.outputs, list) else [model.outputs]
    if all(keras.backend.standardize_dtype(output.dtype) == "float32" for output in outputs):
        return model
    cast = [keras.layers.Activation("linear", dtype="float32", name=f"float32_logits{'_' + str(i) if i else ''}")(output)
            for i, output in enumerate(outputs)]
    return keras.Model(model.inputs, cast if len(cast) > 1 else cast[0], name=model.name)


def build_model(spec, config: RunConfig, data, strategy):
    """The model inside `strategy.scope()`. `runtime.precision` sets the layers' dtype policy while they are built
    (mixed_float16 also gets loss scaling from `compile`)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(config.runtime.precision)
    try:
        with strategy.scope():
            model = spec.build(config.model_args, data.info)
            if config.runtime.precision != "float32":
                model = float32_outputs(model)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return model


def write_run_files(run_dir: Path, config: RunConfig, data, overwrite: bool) -> Path:
    run_dir = files.claim_run_dir(run_dir, overwrite, config.model)
    files.write_text_atomic(run_dir / files.CONFIG_FILE, config.to_yaml())
    files.write_json(run_dir / files.DATA_FILE, data.record)
    for artifact in data.artifacts:
        artifact.save(run_dir)
    return run_dir
