"""`kerasllm export RUN --format hf`: a Hugging Face folder that transformers loads by itself, checked in transformers.

The fast tests check the tokenizer.json against the run's tokenizer and the refusals; the slow ones export a GPT-2
(learned positions, char tokens) and a GPT-NeoX (rotary positions, word tokens) run and load each in a fresh process
that imports transformers and nothing of kerasllm."""

import json
import subprocess
import sys

import numpy as np
import pytest

from kerasllm.core.errors import UserError
from kerasllm.export import hf
from kerasllm.tokenizers import Tokenizer
from tests.conftest import assert_says

TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind to suffer\n" * 4


@pytest.mark.parametrize("kind", ["char", "word", "wordpiece", "sentencepiece"])
def test_the_tokenizer_json_gives_the_runs_ids_and_text(kind):
    # small vocabularies: unknown tokens too (sentencepiece: its 256 byte pieces, then what it learns)
    ours = Tokenizer.fit(TEXT * 8, kind, vocab_size={"char": 30, "word": 12, "wordpiece": 60, "sentencepiece": 300}[kind])
    theirs = hf.tokenizer_json(ours)
    for text in (TEXT[:90], "Zebras? ¿Qué? [EOS] 12", "", "\nstarts on a new line", "  two  spaces\n\n", " lead", "日本"):
        ids = list(map(int, ours.encode(text)))
        assert theirs.encode(text, add_special_tokens=False).ids == ids, text
        assert theirs.decode(ids, skip_special_tokens=True) == ours.decode(ids), text  # [UNK] reads U+FFFD in both
    # a character the vocabulary lacks: [UNK], or its bytes where the tokenizer falls back to them
    assert ours.unk_id in ours.encode("Zebras") or kind == "sentencepiece"
    eos = ours.eos_id
    assert theirs.decode([*ours.encode("be"), eos], skip_special_tokens=True) == "be"  # specials vanish, as in kerasllm


def test_the_config_is_gpt2_for_learned_positions_and_neox_for_rotary():
    from zoo.transformer_lm import TransformerLMConfig

    ours = Tokenizer.fit(TEXT, "char")
    gpt2 = hf.model_config(TransformerLMConfig(), ours)
    neox = hf.model_config(TransformerLMConfig(position="rotary"), ours)
    assert gpt2["model_type"] == "gpt2" and gpt2["activation_function"] == "gelu" and gpt2["n_inner"] == 512
    assert neox["model_type"] == "gpt_neox" and neox["use_parallel_residual"] is False and neox["rotary_pct"] == 1.0
    assert gpt2["eos_token_id"] == ours.eos_id and gpt2["vocab_size"] == ours.vocab_size


def test_what_hf_cannot_take_is_one_line(monkeypatch, trained_run):
    from kerasllm import runs

    run = runs.load_run(trained_run)  # lstm-textgen
    with pytest.raises(UserError) as error:
        hf.check_request(run, model=None)
    assert_says(str(error.value), "transformer-lm and hub-causal-lm runs", "lstm-textgen")
    monkeypatch.setattr(hf.importlib.util, "find_spec", lambda name: None if name == "torch" else object())
    with pytest.raises(UserError) as error:
        hf.check_request(run, model=None)
    assert_says(str(error.value), "torch", 'pip install "kerasllm[hf]"')


LOAD = """
import json, sys
import numpy as np, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, text = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(folder).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
ids = tokenizer(text, add_special_tokens=False)["input_ids"]
with torch.no_grad():
    logits = model(torch.tensor([ids[:32]])).logits[0].numpy()  # the context
    greedy = model.generate(torch.tensor([ids[:16]]), do_sample=False, max_new_tokens=16)[0, 16:].tolist()
print(json.dumps({"kerasllm": [m for m in sys.modules if m.startswith("kerasllm")], "ids": ids, "logits": logits.tolist(),
                  "greedy": tokenizer.decode(greedy, skip_special_tokens=True), "type": type(model).__name__}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("position, kind, architecture", [
    ("learned", "char", "GPT2LMHeadModel"),
    pytest.param("rotary", "word", "GPTNeoXForCausalLM", marks=pytest.mark.heavy),  # the second family: heavy tier (CI time)
])
def test_transformers_alone_loads_the_folder_and_agrees_with_kerasllm(runner, corpus_file, tmp_path, position, kind,
                                                                      architecture):
    from kerasllm import generation, runs
    from kerasllm.export.saving import load_model
    from tests.commands.test_cli import invoke
    from tests.conftest import TINY_LM

    run_dir = tmp_path / "run"
    trained = invoke(runner, "train", "transformer-lm", "--data", corpus_file, "--out", run_dir, "--quiet", *TINY_LM,
                     "--set", f"model_args.position={position}", "--set", f"data.tokenizer={kind}", "--set", "data.vocab_size=300",
                     "--set", "data.sequence_length=32", "--set", "model_args.max_sequence_length=32")
    assert trained.exit_code == 0, trained.output
    exported = invoke(runner, "export", run_dir, "--format", "hf")
    assert exported.exit_code == 0, exported.output
    line = exported.stdout.splitlines()[0]
    assert all(fact in line for fact in (architecture, "max |logit diff|", "the same 16 greedy tokens", "same token ids and text"))
    folder = run_dir / "export" / "hf"
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    run = runs.load_run(run_dir)
    tokenizer, model = run.artifacts["tokenizer"], load_model(run_dir / "model.keras")
    text = "The quick brown fox jumps over the lazy dog [EOS] and then some more"  # typed [EOS] is text
    done = subprocess.run([sys.executable, "-c", LOAD, str(folder), text], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout)
    assert found["kerasllm"] == [] and found["type"] == architecture  # transformers alone
    assert found["ids"] == list(map(int, tokenizer.encode(text)))
    ours = np.asarray(model.predict_on_batch(np.asarray([found["ids"][:32]], np.int32)))[0]
    assert np.max(np.abs(np.asarray(found["logits"]) - ours)) <= 1e-4
    (continued,) = generation.generate(model, tokenizer, [tokenizer.decode(found["ids"][:16])], 16, window=32, spec=run.spec,
                                       temperature=0.0)
    assert found["greedy"] == continued
    again = invoke(runner, "export", run_dir, "--format", "hf")
    assert again.exit_code == 2 and "--overwrite" in again.stderr  # an export is never replaced unasked
    assert invoke(runner, "export", run_dir, "--format", "hf", "--overwrite").exit_code == 0


CHAT = """
import json, sys
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
messages = json.loads(sys.argv[2])
print(json.dumps(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)))
"""


@pytest.mark.slow
def test_a_chat_runs_template_gives_kerasllm_chats_ids_in_transformers(runner, chat_run, tmp_path):
    from kerasllm import runs
    from tests.commands.test_cli import invoke

    out = tmp_path / "hf"
    exported = invoke(runner, "export", chat_run, "--format", "hf", "--out", out)
    assert exported.exit_code == 0, exported.output
    assert "the chat template gives `kerasllm chat`'s ids" in exported.stdout
    run = runs.load_run(chat_run)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there!"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Again?"}]
    done = subprocess.run([sys.executable, "-c", CHAT, str(out), json.dumps(messages)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    ours = run.artifacts["chat_template"].prompt(run.artifacts["tokenizer"], messages)
    assert json.loads(done.stdout) == list(map(int, ours))
