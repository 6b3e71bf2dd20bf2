"""`kerasllm export RUN --format gguf`: one file llama.cpp loads, checked in llama.cpp.

The fast tests read a written file back with the `gguf` reader (every tensor's name, shape and values against the
Keras model, the tokenizer's tokens and types) and check the refusals; the slow ones (where llama-cpp-python is
installed) export through the command and load the file in a fresh process that imports llama_cpp and nothing of
kerasllm: the same token ids, logits within llama.cpp's GELU approximation, and llama.cpp's own greedy sampler gives
`kerasllm generate --temperature 0`'s text."""

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from kerasllm.core.errors import UserError
from kerasllm.export import gguf as gguf_export
from kerasllm.tokenizers import Tokenizer
from tests.conftest import assert_says, optional

TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind to suffer\n" * 4


def test_the_file_holds_every_tensor_and_token_as_llama_cpp_reads_them(lm_run, tmp_path):
    from gguf import GGUFReader

    from kerasllm import runs
    from kerasllm.export.saving import load_model

    run, model = runs.load_run(lm_run), load_model(lm_run / "model.keras")
    tokenizer = run.artifacts["tokenizer"]
    path = tmp_path / "model.gguf"
    architecture, _, _ = gguf_export.write(path, run, model)
    reader = GGUFReader(str(path))

    def value(key):
        field = reader.fields[key]
        return field.contents() if hasattr(field, "contents") else field.parts[field.data[0]][0]

    assert architecture == "gpt2" and value("general.architecture") == "gpt2"
    assert value("gpt2.context_length") == 32 and value("gpt2.block_count") == 1 and value("gpt2.embedding_length") == 16
    assert value("tokenizer.ggml.model") == "t5" and value("tokenizer.ggml.add_space_prefix") is False
    assert value("tokenizer.ggml.remove_extra_whitespaces") is False
    assert value("tokenizer.ggml.add_bos_token") is False and value("tokenizer.ggml.eos_token_id") == tokenizer.eos_id
    found = {tensor.name: tensor for tensor in reader.tensors}
    layers = [f"blk.0.{name}.{part}" for name in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down")
              for part in ("weight", "bias")]
    assert set(found) == {"token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias", *layers}

    def array(name):
        tensor = found[name]
        return np.asarray(tensor.data).reshape(tuple(reversed([int(n) for n in tensor.shape])))  # ggml's dims, innermost first

    block = model.get_layer("block_0")
    tokens = [bytes(reader.fields["tokenizer.ggml.tokens"].parts[i]).decode() for i in reader.fields["tokenizer.ggml.tokens"].data]
    embedding = np.asarray(model.get_layer("token_embedding").embeddings)
    assert [int(n) for n in found["blk.0.attn_qkv.weight"].shape] == [16, 48]  # in, out: what llama.cpp's gpt2 asks for
    np.testing.assert_array_equal(array("blk.0.attn_qkv.weight"), np.asarray(block.qkv.kernel).T)
    np.testing.assert_array_equal(array("blk.0.ffn_down.weight"), np.asarray(block.mlp_out.kernel).T)
    np.testing.assert_array_equal(array("blk.0.attn_norm.bias"), np.asarray(block.attention_norm.beta))
    np.testing.assert_array_equal(array("token_embd.weight"), embedding)
    np.testing.assert_array_equal(array("position_embd.weight"),
                                  np.asarray(model.get_layer("position_embedding").position_embeddings))
    assert tokens == ["\u2581" if token == " " else token for token in tokenizer.vocabulary]  # the space as SentencePiece's
    types = list(reader.fields["tokenizer.ggml.token_type"].parts[i][0] for i in reader.fields["tokenizer.ggml.token_type"].data)
    assert types[tokenizer.unk_id] == 2 and types[tokenizer.eos_id] == 3 and len(types) == tokenizer.vocab_size
    assert types[tokenizer.vocabulary.index("e")] == 1


def test_a_rotary_run_is_gptneox_with_its_own_output_matrix_and_no_positions():
    from kerasllm.data import DataInfo
    from zoo.transformer_lm import TransformerLMConfig, build

    ours = Tokenizer.fit(TEXT, "char")
    hparams = TransformerLMConfig(num_layers=1, hidden_dim=16, num_heads=2, position="rotary")
    model = build(hparams, DataInfo(vocab_size=ours.vocab_size))
    tokens, _ = gguf_export.vocabulary(ours)
    weights = gguf_export.tensors(model, hparams)
    assert "position_embd.weight" not in weights and weights["output.weight"].shape == (len(tokens), 16)
    np.testing.assert_array_equal(weights["output.weight"], weights["token_embd.weight"])  # tied, written out for gptneox
    qkv = np.asarray(model.get_layer("block_0").qkv.kernel)  # (q | k | v) × heads: llama.cpp's order, as it is
    np.testing.assert_array_equal(weights["blk.0.attn_qkv.weight"], qkv.T)


def test_what_gguf_cannot_take_is_one_line(monkeypatch, trained_run, lm_run, tmp_path):
    from kerasllm import runs

    def refused(run, *facts):
        with pytest.raises(UserError) as error:
            gguf_export.check_request(run, model=None)
        assert_says(str(error.value), *facts)

    refused(runs.load_run(trained_run), "transformer-lm runs", "lstm-textgen")
    word = SimpleNamespace(spec=SimpleNamespace(name="transformer-lm"), artifacts={"tokenizer": Tokenizer.fit(TEXT, "word")})
    refused(word, "char tokenizers", "word", "--format hf")
    refused(SimpleNamespace(spec=SimpleNamespace(name="hub-causal-lm"), artifacts={}), "--format hf", "convert_hf_to_gguf.py")
    for out, overwrite, fact in ((tmp_path / "model.bin", False, "ending in .gguf"), (lm_run / "model.gguf", False, "run folder")):
        with pytest.raises(UserError) as error:
            gguf_export.check_out(out, overwrite)
        assert_says(str(error.value), fact)
    mine = tmp_path / "mine.gguf"
    mine.write_bytes(b"GGUF not really")
    for overwrite, fact in ((False, "--overwrite"), (True, "not one")):  # a user's file is never replaced
        with pytest.raises(UserError) as error:
            gguf_export.check_out(mine, overwrite)
        assert_says(str(error.value), fact)
    assert mine.read_bytes() == b"GGUF not really"
    monkeypatch.setattr(gguf_export.importlib.util, "find_spec", lambda name: None)
    refused(runs.load_run(lm_run), 'pip install "kerasllm[gguf]"')


def test_the_command_writes_the_file_and_reads_it_back(runner, lm_run, tmp_path):
    from tests.commands.test_cli import invoke

    out = tmp_path / "model.gguf"
    exported = invoke(runner, "export", lm_run, "--format", "gguf", "--out", out)
    assert exported.exit_code == 0, exported.output
    wrote, load = exported.stdout.splitlines()
    assert_says(wrote, "llama.cpp's gpt2", "read back: 16 tensors and the tokenizer as written")
    assert_says(load, "llama_cpp.Llama", "within the run's context")
    assert out.is_file() and not out.with_name("model.gguf.partial").exists()
    again = invoke(runner, "export", lm_run, "--format", "gguf", "--out", out)
    assert again.exit_code == 2 and "--overwrite" in again.stderr


LOAD = """
import json, sys
import numpy as np
from llama_cpp import Llama
path, text, banned = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
llm = Llama(model_path=path, n_ctx=32, logits_all=True, verbose=False)
ids = llm.tokenize(text.encode(), add_bos=False, special=False)
llm.eval(ids[:32])
logits = np.asarray(llm.scores[:32]).tolist()
llm.reset()
prompt = llm.detokenize(ids[:16]).decode()
answer = llm.create_completion(prompt, max_tokens=16, temperature=0, logit_bias={i: -1e30 for i in banned})
print(json.dumps({"kerasllm": [m for m in sys.modules if m.startswith("kerasllm")], "ids": ids, "logits": logits,
                  "prompt": prompt, "greedy": answer["choices"][0]["text"],
                  "architecture": llm.metadata["general.architecture"]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("position, architecture", [("learned", "gpt2"), ("rotary", "gptneox")])
def test_llama_cpp_alone_loads_the_file_and_agrees_with_kerasllm(runner, corpus_file, tmp_path, position, architecture):
    optional("llama_cpp")
    from kerasllm import generation, runs
    from kerasllm.export.saving import load_model
    from tests.commands.test_cli import invoke
    from tests.conftest import TINY_LM

    run_dir = tmp_path / "run"
    trained = invoke(runner, "train", "transformer-lm", "--data", corpus_file, "--out", run_dir, "--quiet", *TINY_LM,
                     "--set", f"model_args.position={position}", "--set", "data.sequence_length=32",
                     "--set", "model_args.max_sequence_length=32", "--set", "train.steps_per_epoch=30")
    assert trained.exit_code == 0, trained.output
    exported = invoke(runner, "export", run_dir, "--format", "gguf")
    assert exported.exit_code == 0, exported.output
    assert_says(exported.stdout.splitlines()[0], f"llama.cpp's {architecture}", "in llama.cpp", "max |logit diff|",
                "the same 16 greedy tokens")
    run = runs.load_run(run_dir)
    tokenizer, model = run.artifacts["tokenizer"], load_model(run_dir / "model.keras")
    text = "The quick brown fox jumps over the lazy dog [EOS] and then ¿qué? 日本 more"  # typed [EOS] is text; ¿é日本 unknown
    banned = generation.banned_ids(tokenizer, allow_eos=False)
    done = subprocess.run([sys.executable, "-c", LOAD, str(run_dir / "export" / "model.gguf"), text, json.dumps(banned)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout)
    assert found["kerasllm"] == [] and found["architecture"] == architecture  # llama.cpp alone
    ours = list(map(int, tokenizer.encode(text)))
    assert found["ids"] == gguf_export.one_unknown_per_run(ours, tokenizer.unk_id) != ours  # 日本: one [UNK] there, two here
    window = found["ids"][:32]  # before the unknown characters
    logits = np.asarray(model.predict_on_batch(np.asarray([window], np.int32)))[0]
    assert np.max(np.abs(np.asarray(found["logits"]) - logits)) <= 1e-2
    (continued,) = generation.generate(model, tokenizer, [found["prompt"]], 16, window=32, spec=run.spec, temperature=0.0)
    assert found["greedy"] == continued  # llama.cpp's own greedy sampler, kerasllm's never-sampled tokens biased out


CHAT = """
import json, sys
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
llm = Llama(model_path=sys.argv[1], verbose=False)
formatter = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token="[EOS]", bos_token="")
prompt = formatter(messages=json.loads(sys.argv[2])).prompt
print(json.dumps(llm.tokenize(prompt.encode(), add_bos=False, special=True)))
"""


@pytest.mark.slow
def test_a_chat_runs_template_gives_kerasllm_chats_ids_in_llama_cpp(runner, chat_run, tmp_path):
    optional("llama_cpp")
    from kerasllm import runs
    from tests.commands.test_cli import invoke

    out = tmp_path / "chat.gguf"
    exported = invoke(runner, "export", chat_run, "--format", "gguf", "--out", out)
    assert exported.exit_code == 0, exported.output
    assert "the file's chat template gives `kerasllm chat`'s ids" in exported.stdout
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there!"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Again?"}]
    done = subprocess.run([sys.executable, "-c", CHAT, str(out), json.dumps(messages)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    run = runs.load_run(chat_run)
    assert json.loads(done.stdout) == list(map(int, run.artifacts["chat_template"].prompt(run.artifacts["tokenizer"], messages)))


def test_llama_cpps_unigram_reads_a_run_of_unknown_characters_as_one():
    assert gguf_export.one_unknown_per_run([5, 1, 1, 1, 6, 1, 7, 1, 1], unk_id=1) == [5, 1, 6, 1, 7, 1]
