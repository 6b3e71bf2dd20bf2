"""kill -9 at a random moment, then `--resume`: a run ends where an uninterrupted run ends (one run in the slow tier,
every zoo model and kind of run in the heavy tier).

Each model trains at its own defaults (steps per call, loop, dropout) with tiny sizes, `runtime.deterministic=true`
and a step checkpoint every 2 steps; the kill lands after the first checkpoint, at a random moment (during a step,
validation or a checkpoint write). hub-classifier runs through `kerasllm finetune` (a fine-tuning run); two more cases
take the custom training loop (`runtime.loop=custom`, the multi-worker and TPU loop) and a LoRA fine-tuning run.
"""

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.zoo_cases import cli_args, matrix_names, write_cases

ROOT = Path(__file__).resolve().parents[2]
STEPS = 10  # per epoch: a multiple of every model's steps per call (transformer-lm: 10)


@pytest.fixture(scope="module")
def zoo_settings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    return {name: [item for item in settings if item not in ("model_args.dropout=0.0", "train.steps_per_epoch=1",
                                                              "train.epochs=1", "runtime.steps_per_execution=1")]
            for name, settings in write_cases(folder / "data").items()}


def complete_checkpoints(run_dir: Path) -> list:
    """Checkpoints renamed into place (a `.partial` one is still being written)."""
    folder = run_dir / "checkpoints"
    return [p for p in folder.glob("step-*") if not p.name.endswith(".partial")] if folder.is_dir() else []


def run(args: list[str], **kwargs):
    return subprocess.Popen([sys.executable, "-m", "kerasllm", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(ROOT), **kwargs)


ALL_CASES = {**{name: (name, []) for name in matrix_names()},
             "transformer-lm, custom loop": ("transformer-lm", ["runtime.loop=custom"]),
             "transformer-lm, LoRA fine-tuning": ("transformer-lm", ["finetune.base=BASE", "finetune.method=lora", "finetune.lora_rank=2"])}
# The slow tier kills one run, transformer-lm (XLA steps run 10 per call, with dropout), and resumes every other zoo
# model exactly in-process below (a stopped run, not a killed one). The heavy tier (.ci/heavy) kills every case: each
# zoo model, the custom loop, a fine-tuning run's LoRA adapters.
KILLED_IN_SLOW = ("transformer-lm",)
CASES = [case if case in KILLED_IN_SLOW else pytest.param(case, marks=pytest.mark.heavy) for case in ALL_CASES]

@pytest.fixture(scope="module")
def lm_base(zoo_settings, tmp_path_factory):
    """A transformer-lm run for the LoRA case to fine-tune."""
    base = tmp_path_factory.mktemp("base") / "run"
    _, stderr = (process := run(cli_args("transformer-lm", [*zoo_settings["transformer-lm"], "train.epochs=1"], base))).communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return base


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_kill_9_then_resume_ends_with_the_same_weights(zoo_settings, tmp_path, request, case):
    from kerasllm.export.saving import load_model

    name, extra = ALL_CASES[case]
    own = zoo_settings[name]
    if "finetune.base=BASE" in extra:  # the base's architecture is inherited
        extra = [item.replace("BASE", str(request.getfixturevalue("lm_base"))) for item in extra]
        own = [item for item in own if not item.startswith("model_args.")]
    settings = [*own, *extra, "train.epochs=2", f"train.steps_per_epoch={STEPS}", "train.checkpoint_every_steps=2",
                "train.keep_checkpoints=0", "runtime.deterministic=true", "train.validation_steps=2"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    started = time.monotonic()
    _, stderr = (process := run(cli_args(name, settings, straight))).communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    duration = time.monotonic() - started
    rng = random.Random(name)
    for attempt in range(3):  # a run faster than the straight one may end before the kill: try again, sooner
        shutil.rmtree(killed, ignore_errors=True)
        victim = run(cli_args(name, settings, killed))
        started = time.monotonic()
        while not complete_checkpoints(killed) and victim.poll() is None and time.monotonic() < started + 300:
            time.sleep(0.05)
        # a random moment between the first complete checkpoint and the end of training (a straight run's last part is saving)
        time.sleep(rng.uniform(0.0, max(0.0, 0.6 * duration / (attempt + 1) - (time.monotonic() - started))))
        victim.kill()  # SIGKILL: no handler runs
        victim.communicate(timeout=60)
        if victim.returncode == -9:
            break
    assert victim.returncode == -9, "the run ended before the kill three times; nothing was interrupted"
    landed = sorted(p.name for p in (killed / "checkpoints").iterdir())
    _, stderr = (resumed := run(["train", "--resume", str(killed), "--quiet"])).communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-3000:]
    one, two = load_model(straight).get_weights(), load_model(killed).get_weights()
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(one, two))
    print(json.dumps({case: {"killed_after": landed[-1] if landed else None, "max_abs_diff": diff}}))
    assert diff <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("case", [case for case, (_, extra) in ALL_CASES.items() if not extra and case not in KILLED_IN_SLOW])
def test_the_models_not_killed_resume_exactly_in_process(zoo_settings, tmp_path, runner, case):
    """The zoo models the slow tier does not kill: a run stopped after its first epoch (its last checkpoint and
    model.keras gone, as a kill leaves it) and resumed ends with the straight run's weights; in this process, without
    the cost of three fresh ones."""
    from kerasllm import cli
    from kerasllm.export.saving import load_model

    name, _ = ALL_CASES[case]
    settings = [*zoo_settings[name], "train.epochs=2", "train.steps_per_epoch=4", "runtime.deterministic=true", "train.validation_steps=2"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    result = runner.invoke(cli.app, cli_args(name, settings, straight))
    assert result.exit_code == 0, result.output
    shutil.copytree(straight, stopped)
    shutil.rmtree(sorted((stopped / "checkpoints").iterdir())[-1])
    (stopped / "model.keras").unlink()
    result = runner.invoke(cli.app, ["train", "--resume", str(stopped), "--quiet"])
    assert result.exit_code == 0, result.output
    one, two = load_model(straight).get_weights(), load_model(stopped).get_weights()
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(one, two, strict=True)) <= 1e-6
