"""Chat on keras-hub presets: each family's own template (Gemma, Llama 3; a plain one for GPT-2), `finetune PRESET
--task chat`, and the tuned run answering through `generate`, `chat`'s replier and `kerasllm serve` (the `openai`
client), with tiny presets saved locally (no network here)."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.chat_presets import save_chat_presets, write_conversations
from tests.commands.test_cli import invoke

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <|eot_id|>"},
                {"role": "assistant", "content": "Hello!"}]
RENDERED = {  # each family's model card spelling, special tokens included
    "gpt2": ("Be brief.\n\nUser: Hi <|eot_id|>\nAssistant: Hello!<|endoftext|>\n", "Hello!<|endoftext|>\n"),
    "llama3": ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nHi <|eot_id|><|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>", "Hello!<|eot_id|>"),
    "gemma": ("<bos><start_of_turn>user\nBe brief.\n\nHi <|eot_id|><end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n",
              "Hello!<end_of_turn>\n"),
}


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    return save_chat_presets(tmp_path_factory.mktemp("chat-presets"))


SPECIAL = {"<|endoftext|>", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<bos>",
           "<start_of_turn>", "<end_of_turn>"}


def spelled(tokenizer, ids) -> str:
    """Token ids as the vocabulary spells them: special tokens as written, the others as the bytes they stand for."""
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    codes, chars = bytes_to_unicode()
    to_byte = dict(zip(chars, codes))
    sentencepiece = type(tokenizer.tokenizer).__name__ == "GemmaTokenizer"
    out = b""
    for token in (tokenizer.token_text(i) for i in ids):
        if token in SPECIAL:
            out += token.encode()
        elif re.fullmatch(r"<0x[0-9A-F]{2}>", token):  # SentencePiece's byte fallback
            out += bytes([int(token[3:-1], 16)])
        elif sentencepiece:
            out += token.replace("\u2581", " ").encode()
        else:
            out += b"".join(to_byte[char] for char in token)
    return out.decode()


@pytest.mark.parametrize("family", ["gpt2", "llama3", "gemma"])
def test_each_family_gets_its_own_template_with_the_loss_on_replies_only(presets, family, tmp_path):
    from kerasllm import hub
    from kerasllm.data.chat_templates import ChatTemplate
    from kerasllm.tasks.chat import template_for

    tokenizer = hub.load_tokenizer(str(presets[family]))
    template = template_for(tokenizer)
    assert template.kind == {"gpt2": "plain"}.get(family, family)
    ids, weights = template.encode(tokenizer, CONVERSATION)
    whole, weighted = RENDERED[family]
    assert spelled(tokenizer, ids) == whole
    assert spelled(tokenizer, ids[weights > 0]) == weighted  # the reply and its end, nothing the user or system wrote
    typed = tokenizer.token_id("<|eot_id|>")  # a user who types a special token gets its text, not the token
    assert family != "llama3" or list(ids).count(typed) == 3
    prompt = template.prompt(tokenizer, CONVERSATION[:2])
    assert spelled(tokenizer, prompt) == whole[:whole.index("Hello!")]  # a reply is written after the assistant's header
    bound = template.bind(tokenizer)
    assert bound.eos_id == tokenizer.token_id(template.stop)  # a reply ends at the template's stop token
    template.save(tmp_path)
    assert ChatTemplate.load(tmp_path) == template  # the run keeps it beside the tokenizer


@pytest.fixture(scope="module")
def tuned(presets, tmp_path_factory):
    """A Llama 3 preset fine-tuned for chat until it answers its one reply."""
    from typer.testing import CliRunner

    folder = tmp_path_factory.mktemp("tuned")
    data = write_conversations(folder / "conv.jsonl")
    out = folder / "llama-chat"
    runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
    result = invoke(runner, "finetune", presets["llama3"], "--task", "chat", "--data", data, "--out", out, "--epochs", "12",
                    "--set", "train.steps_per_epoch=5", "--set", "data.sequence_length=64", "--set", "train.learning_rate=1e-2",
                    "--quiet")
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_a_preset_tuned_for_chat_answers_everywhere(runner, tuned, chat_run, lm_run):
    from kerasllm.serve.app import create_app
    from tests.serve.test_serve import load, openai, running

    assert json.loads((tuned / "chat_template.json").read_text())["kind"] == "llama3"
    record = json.loads((tuned / "data.json").read_text())
    assert record["template"] == "llama3" and record["added_tokens"] == 0
    assert json.loads((tuned / "metrics.json").read_text())["parent"]["kind"] == "preset"
    reply = invoke(runner, "generate", tuned, "--prompt", "Say hello to Ada 3.", "--temperature", "0", "--max-length", "20")
    assert reply.exit_code == 0 and reply.stdout.strip() == "Hello, Ada!", reply.output
    assert json.loads(invoke(runner, "evaluate", tuned, "--json").stdout)["accuracy"] > 0.9

    served, others = load(tuned, max_batch=4), [load(chat_run), load(lm_run)]
    try:
        with running(create_app([served, *others])) as base:  # one server: a preset's chat run, a zoo chat run, a plain LM
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=60)
            messages = [{"role": "user", "content": "Say hello to Ada 3."}]
            answer = client.chat.completions.create(model=tuned.name, messages=messages, temperature=0)
            assert answer.choices[0].message.content == "Hello, Ada!" and answer.choices[0].finish_reason == "stop"
            streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
                model=tuned.name, messages=messages, temperature=0, stream=True) if chunk.choices)
            assert streamed == "Hello, Ada!"

            def alone_and_together(prompt):
                return client.completions.create(model=tuned.name, prompt=prompt, max_tokens=6, temperature=0).choices[0].text

            prompts = [f"Say hello {word}" for word in ("to", "again", "Ada", "now", "there", "twice")]
            alone = [alone_and_together(prompt) for prompt in prompts]
            with ThreadPoolExecutor(6) as pool:
                together = list(pool.map(alone_and_together, prompts))
            assert together == alone and served.engine.busiest > 1  # rows at their own positions, side by side
            assert [model.id for model in client.models.list().data] == [tuned.name, chat_run.name, lm_run.name]
            for other in (chat_run, lm_run):
                assert client.completions.create(model=other.name, prompt="The", max_tokens=3).choices[0].finish_reason
    finally:
        for one in (served, *others):
            one.engine.stop()


def test_a_preset_cannot_be_tuned_for_another_task(runner, presets, tmp_path):
    from tests.commands.test_cli import assert_user_error

    result = invoke(runner, "finetune", presets["gpt2"], "--task", "seq2seq", "--data", tmp_path / "x.jsonl", "--out", tmp_path / "o")
    assert_user_error(result, "a keras-hub preset fine-tunes for chat or text-classification, not seq2seq")
    assert not (tmp_path / "o").exists()


def test_decoder_rows_step_alone_like_the_whole_model(presets):
    """Serving slots on a preset: each row's cache and position are its own; a step's logits equal the whole model's."""
    import keras_hub

    from kerasllm import hub

    lm = keras_hub.models.CausalLM.from_preset(str(presets["gpt2"]), preprocessor=None)
    decoder = hub.CausalLMDecoder(lm, 32)
    caches = decoder.slot_caches(3)
    prompts = {0: np.asarray([5, 6, 7], np.int32), 2: np.asarray([9, 10, 11, 12, 13], np.int32)}
    for row, prompt in prompts.items():
        _, row_cache = decoder.prefill(prompt)
        caches = decoder.put(caches, row, row_cache)
    logits, caches = decoder.step_rows(caches, np.asarray([20, 0, 21]), np.asarray([3, 0, 5]), np.asarray([True, False, True]))
    for row, token in ((0, 20), (2, 21)):
        ids = np.concatenate([prompts[row], [token]])[None]
        whole = np.asarray(lm({"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}))[0, -1]
        np.testing.assert_allclose(logits[row], whole, atol=1e-4)
    assert not logits[1].any()


@pytest.mark.slow
def test_a_tuned_preset_goes_to_hugging_face_through_keras_hub_and_agrees_in_transformers(tuned, tmp_path):
    """#31: a hub-causal-lm run through keras-hub's own exporter, checked in transformers (logits, greedy, tokenizer)."""
    from typer.testing import CliRunner

    runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
    result = invoke(runner, "export", tuned, "--format", "hf", "--out", tmp_path / "hf")
    assert result.exit_code == 0, result.output
    line = result.stdout.splitlines()[0]
    assert "LlamaForCausalLM" in line and "max |logit diff|" in line and "greedy tokens" in line
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["suppress_tokens"] and generation["eos_token_id"] is not None  # ends where kerasllm chat ends
