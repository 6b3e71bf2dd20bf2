"""`kerasllm doctor`: versions, devices, the auto strategy, and each known trap (facts passed in, no hardware needed)."""

import json
import os

from kerasllm.doctor import traps
from tests.commands.test_cli import invoke

FOUND = {"tensorflow": "2.21.0", "tensorflow-text": "2.21.1", "jax": None, "tensorflow-tpu": None}
BF16 = {"avx512f", "avx512_bf16"}


def names(hits):
    return [hit["trap"] for hit in hits]


def test_doctor_reports_versions_devices_and_the_auto_strategy(runner):
    result = invoke(runner, "doctor", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["versions"]["tensorflow"].startswith("2.") and found["versions"]["keras"].startswith("3.")
    assert found["keras_backend"] == "tensorflow" and any(d["type"] == "CPU" for d in found["devices"])
    assert found["auto_strategy"].startswith("cpu (the default strategy)")
    table = invoke(runner, "doctor")
    assert table.exit_code == 0 and "--strategy auto" in table.output and "tensorflow-text" in table.output
    assert "XLA CPU defaults" in table.output and "compilation cache" in table.output


def test_doctor_says_which_fast_path_defaults_this_cpu_takes(runner, monkeypatch):
    """The XLA CPU flags measured fastest for this CPU kind, the XLA_FLAGS in effect, and the compilation cache."""
    from kerasllm import compilation

    for name in ("XLA_FLAGS", "TF_XLA_FLAGS"):  # restored after the test: doctor sets kerasllm's defaults in them
        monkeypatch.setenv(name, os.environ.get(name, ""))
    monkeypatch.setattr(compilation, "cpu_vendor", lambda: "AuthenticAMD")
    found = json.loads(invoke(runner, "doctor", "--json").stdout)
    assert found["cpu_kind"] == "AMD" and found["xla_cpu_defaults"] == compilation.XLA_CPU_DEFAULTS["AuthenticAMD"]
    assert found["compilation_cache"]["folder"] == str(compilation.compilation_cache_dir("tensorflow"))
    assert found["compilation_cache"]["programs"] >= 0
    monkeypatch.setattr(compilation, "cpu_vendor", lambda: "GenuineIntel")
    found = json.loads(invoke(runner, "doctor", "--json").stdout)
    assert found["cpu_kind"] == "Intel" and found["xla_cpu_defaults"] == "--xla_cpu_use_thunk_runtime=false"
    monkeypatch.setenv("KERASLLM_COMPILATION_CACHE", "0")
    assert json.loads(invoke(runner, "doctor", "--json").stdout)["compilation_cache"] is None


def test_no_trap_on_a_healthy_cpu_install():
    assert traps(FOUND, {}, BF16, tpu=False) == []


def test_each_trap_and_its_fix():
    assert names(traps(FOUND, {"TF_USE_LEGACY_KERAS": "1"}, BF16, False)) == ["TF_USE_LEGACY_KERAS is set"]
    mismatch = traps(dict(FOUND, **{"tensorflow-text": "2.20.0"}), {}, BF16, False)
    assert names(mismatch) == ["tensorflow-text does not match TensorFlow"] and "tensorflow-text==2.21.*" in mismatch[0]["fix"]
    assert names(traps(FOUND, {}, BF16, tpu=True)) == ["TensorFlow on a TPU runtime without tensorflow-tpu"]
    assert names(traps(FOUND, {}, BF16, tpu=True, backend="jax")) == []  # the TPU path: Keras on JAX, TensorFlow for tf.data
    both = dict(FOUND, jax="0.10.2", **{"tensorflow-tpu": "2.20.0"})
    assert names(traps(both, {}, BF16, tpu=True)) == ["JAX and TensorFlow both installed for the TPU"]
    assert names(traps(FOUND, {}, {"avx2", "fma"}, False)) == ["no AVX-512-BF16 / AMX-BF16 on this CPU"]


def test_mixed_bfloat16_on_a_cpu_without_bfloat16_gets_a_note():
    from kerasllm.doctor import bfloat16_note

    plain_cpu = {"avx2", "fma"}
    note = bfloat16_note("mixed_bfloat16", "cpu", plain_cpu, accelerators=0)
    assert note and "emulated" in note and "float32" in note
    assert bfloat16_note("mixed_bfloat16", "auto", plain_cpu, accelerators=1) is None  # a GPU or TPU takes it
    assert bfloat16_note("mixed_bfloat16", "cpu", plain_cpu | {"amx_bf16"}, accelerators=0) is None
    assert bfloat16_note("float32", "cpu", plain_cpu, accelerators=0) is None
    assert bfloat16_note("mixed_bfloat16", "tpu", plain_cpu) is None
