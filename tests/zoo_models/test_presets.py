"""keras-hub presets by name: `kerasllm generate PRESET` (kerasllm's samplers over the preset's own cache) and
`kerasllm download PRESET`; tested with tiny presets saved locally (no network here)."""


import pytest

from tests.commands.test_cli import assert_user_error, invoke
from tests.tasks.test_text_classification import save_tiny_presets


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_presets(tmp_path_factory.mktemp("presets"))


@pytest.fixture
def offline(monkeypatch):
    from kerasllm.core import network

    monkeypatch.setattr(network, "_reachable", {"www.kaggle.com": False, "huggingface.co": False})


@pytest.fixture
def connections(monkeypatch):
    """Every network connection tried (none goes out): the refusal comes before any library retries for minutes."""
    import socket

    tried = []

    def connect(self, address):
        tried.append(address)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    return tried


def test_cached_decoding_matches_the_whole_model(tiny):
    """Prompts of different lengths decode in one batch, each row with its own cache and position: every step's logits
    equal those of keras-hub's model run on the whole text so far (and greedy text is kerasllm's own, deterministic)."""
    import keras_hub
    import numpy as np

    from kerasllm import hub

    whole = keras_hub.models.CausalLM.from_preset(str(tiny[1]))
    ours = hub.PresetLM(str(tiny[1]))
    prompts = [ours.encode(text) for text in ("good film", "bad", "a moving and clumsy")]
    decoder, steps = hub.CausalLMDecoder(ours.lm, 20), 8
    logits, state = decoder.start(prompts)
    seen, rows = [[] for _ in prompts], [list(prompt) for prompt in prompts]
    for _ in range(steps):
        tokens = np.where(np.arange(logits.shape[-1]) == ours.tokenizer.eos_id, -np.inf, logits).argmax(axis=-1)
        for row, token in enumerate(tokens):
            seen[row].append(logits[row])
            rows[row].append(int(token))
        logits, state = decoder.step(state, tokens)
    for prompt, row, row_logits in zip(prompts, rows, seen):
        ids = np.asarray([row[:-1]], np.int32)
        full = np.asarray(whole({"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}))[0, len(prompt) - 1:]
        np.testing.assert_allclose(np.stack(row_logits), full, atol=1e-4)
    texts = ours.generate(["good film", "bad", "a moving and clumsy"], max_length=steps, temperature=0, allow_eos=False)
    assert texts == [ours.tokenizer.decode(row[len(prompt):]) for prompt, row in zip(prompts, rows)]


def test_a_start_token_shared_with_the_end_may_end_a_row(tiny):
    from kerasllm import hub

    tokenizer = hub.PresetLM(str(tiny[1])).tokenizer  # GPT-2: <|endoftext|> starts, pads and ends
    assert tokenizer.eos_id == tokenizer.special_id("bos") == 0
    assert tokenizer.never_generated() == []


def test_generate_a_preset_from_the_command_line(runner, tiny):
    gpt2 = tiny[1]
    one = invoke(runner, "generate", gpt2, "--prompt", "good film", "--max-length", "6", "--seed", "3")
    assert one.exit_code == 0, one.output
    assert one.stdout.startswith("good film") and one.stdout.endswith("\n")
    again = invoke(runner, "generate", gpt2, "--prompt", "good film", "--max-length", "6", "--seed", "3")
    assert again.stdout == one.stdout
    two = invoke(runner, "generate", gpt2, "--prompt", "good", "--prompt", "bad", "--max-length", "5", "--beam", "2")
    assert two.exit_code == 0, two.output
    assert two.stdout.startswith("good") and "\n\nbad" in two.stdout


def test_generate_refuses_what_it_cannot_run(runner, tiny, offline, connections):
    assert_user_error(invoke(runner, "generate", tiny[0], "--prompt", "x"), "is not a causal language model")
    too_long = invoke(runner, "generate", tiny[1], "--prompt", "good", "--max-length", "40")
    assert_user_error(too_long, "more than the preset's context of 32")
    result = invoke(runner, "generate", "gpt2_base_en", "--prompt", "Hello")
    assert_user_error(result, "cannot reach www.kaggle.com to load the model of preset kaggle://keras/gpt2/keras/gpt2_base_en")
    assert connections == []


def test_download_saves_a_preset_every_command_takes(runner, tiny, tmp_path, offline, connections):
    out = tmp_path / "gpt2-copy"
    result = invoke(runner, "download", tiny[1], "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "config.json").is_file() and (out / "model.weights.h5").is_file() and (out / "tokenizer.json").is_file()
    assert f"kerasllm generate {out}" in result.stdout
    greedy = ["--prompt", "moving", "--max-length", "6", "--temperature", "0"]
    assert invoke(runner, "generate", out, *greedy).stdout == invoke(runner, "generate", tiny[1], *greedy).stdout

    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert_user_error(invoke(runner, "download", tiny[1], "--out", out), "exists and is not empty")
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert_user_error(invoke(runner, "download", "not_a_preset_name"), "is not a keras-hub preset")
    assert_user_error(invoke(runner, "download", "bert_tiny_en_uncased", "--out", tmp_path / "b"), "cannot reach www.kaggle.com")
    assert connections == [] and not (tmp_path / "b").exists()
