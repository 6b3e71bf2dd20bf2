"""Chat: JSONL shapes, the template round trip, the loss mask, cutting at turn boundaries, `--task chat` training and
fine-tuning (the vocabulary grows by the role tokens), the chat session's commands."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kerasllm import cli
from kerasllm.core.errors import UserError
from kerasllm.data.chat import chat_rows, fit_history, load_conversations
from kerasllm.data.chat_templates import ChatTemplate
from kerasllm.serve.session import ChatSession
from kerasllm.tokenizers import Tokenizer
from tests.conftest import write_jsonl

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "See you."}]


@pytest.fixture(scope="module")
def tokenizer():
    text = "".join(m["content"] for m in CONVERSATION) + "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.!?,[]"
    return Tokenizer.fit(text, "char").with_specials(ChatTemplate().specials)


def test_three_shapes_are_detected(tmp_path):
    messages = write_jsonl(tmp_path / "m.jsonl", [{"messages": CONVERSATION}] * 2)
    alpaca = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Add", "input": "1 and 2", "output": "3"},
                                                {"instruction": "Greet", "input": "", "output": "Hi"}])
    dolly = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Sum up", "context": "A long text.", "response": "Short.",
                                                "category": "summarization"}])
    found = load_conversations(str(messages))
    assert found.shape == "messages" and found.conversations[0] == CONVERSATION
    found = load_conversations(str(alpaca))
    assert found.shape == "alpaca"
    assert found.conversations[0] == [{"role": "user", "content": "Add\n\n1 and 2"}, {"role": "assistant", "content": "3"}]
    assert found.conversations[1][0]["content"] == "Greet"  # an empty input adds nothing
    found = load_conversations(str(dolly))
    assert found.shape == "dolly" and found.conversations[0][0]["content"] == "Sum up\n\nA long text."


@pytest.mark.parametrize("records, expected", [
    ([{"question": "a", "answer": "b"}], "has answer, question; chat data must be OpenAI"),
    ([{"messages": CONVERSATION}, {"instruction": "a", "output": "b"}], "line 2 is in the alpaca shape but the file started in the messages"),
    ([{"messages": [{"role": "robot", "content": "x"}]}], "roles are system, user and assistant"),
    ([{"messages": [{"role": "user", "content": "only a question"}]}], "no assistant message"),
    ([{"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "late"}, {"role": "assistant", "content": "y"}]}],
     "only the first message may be one"),
])
def test_other_shapes_are_one_line_naming_the_three(tmp_path, records, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(UserError, match=expected):
        load_conversations(str(path))


def test_a_line_that_is_not_json_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": CONVERSATION}) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"line 2 is not JSON .*Alpaca .*Dolly"):
        load_conversations(str(path))


def test_template_round_trip(tokenizer, tmp_path):
    template = ChatTemplate()
    ids, weights = template.encode(tokenizer, CONVERSATION)
    roles = [tokenizer.special_id(role) for role in ("system", "user", "assistant")]
    assert [int(i) for i in ids if i in roles] == [roles[0], roles[1], roles[2], roles[1], roles[2]]
    assert tokenizer.decode(ids) == "".join(m["content"] for m in CONVERSATION)  # special tokens decode to nothing
    template.save(tmp_path)
    again = ChatTemplate.load(tmp_path)
    assert again == template and np.array_equal(again.encode(tokenizer, CONVERSATION)[0], ids)
    prompt = template.prompt(tokenizer, CONVERSATION[:2])
    assert prompt[-1] == roles[2] and np.array_equal(prompt[:-1], template.encode(tokenizer, CONVERSATION[:2])[0])


def test_typed_role_names_never_become_role_tokens(tokenizer):
    ids = tokenizer.encode("[USER] [ASSISTANT]")
    assert not set(map(int, ids)) & set(tokenizer.special_tokens.values())


def test_the_loss_covers_assistant_tokens_only(tokenizer):
    """Weights: 1 on the assistant's text and its end token, 0 on system and user tokens; and the masked loss does not
    move when the logits at user and system positions change."""
    import keras

    ids, weights = ChatTemplate().encode(tokenizer, CONVERSATION)
    text = {1.0: tokenizer.decode(ids[weights == 1]), 0.0: tokenizer.decode(ids[weights == 0])}
    assert text[1.0] == "Hello!See you."
    assert text[0.0] == "Be brief.Hi thereBye"
    assert int((weights == 1).sum()) == len("Hello!") + len("See you.") + 2  # + each reply's [EOS]
    rows, row_weights, _ = chat_rows(ChatTemplate(), tokenizer, [CONVERSATION], len(ids) + 4)
    targets, target_weights = rows[:, 1:], row_weights[:, 1:]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(*targets.shape, tokenizer.vocab_size)).astype("float32")
    changed = logits.copy()
    changed[target_weights == 0] = rng.normal(size=changed[target_weights == 0].shape) * 10  # only the unweighted positions
    first = float(loss(targets, logits, sample_weight=target_weights))
    assert float(loss(targets, changed, sample_weight=target_weights)) == pytest.approx(first, rel=1e-6)
    changed[target_weights == 1] += 1.0 * (np.arange(tokenizer.vocab_size) == 0)  # a weighted position does move it
    assert float(loss(targets, changed, sample_weight=target_weights)) != pytest.approx(first, rel=1e-6)


def test_long_conversations_are_cut_between_exchanges(tokenizer):
    template = ChatTemplate()
    long = [CONVERSATION[0]] + [m for i in range(6) for m in ({"role": "user", "content": f"question {i}"},
                                                               {"role": "assistant", "content": f"answer {i}"})]
    exchange = len(template.encode(tokenizer, long[1:3])[0])
    system = len(template.encode(tokenizer, long[:1])[0])
    rows, weights, counts = chat_rows(template, tokenizer, [long, CONVERSATION], system + 2 * exchange - 1)
    assert counts["cut_conversations"] == 1 and counts["dropped_exchanges"] == 0
    user, system_id = tokenizer.special_id("user"), tokenizer.special_id("system")
    assert all(row[0] in (user, system_id) for row in rows)  # every row starts at a turn
    assert counts["rows"] == len(rows) and counts["assistant_tokens"] == int(weights[:, 1:].sum())
    assert counts["assistant_tokens"] == sum(len(f"answer {i}") + 1 for i in range(6)) + len("Hello!") + len("See you.") + 2
    _, _, tight = chat_rows(template, tokenizer, [long], exchange - 2)
    assert tight["dropped_exchanges"] == 6 and tight["dropped_conversations"] == 1


def test_history_is_trimmed_oldest_first_keeping_the_system_message(tokenizer):
    template = ChatTemplate()
    whole = len(template.prompt(tokenizer, CONVERSATION))
    kept, dropped = fit_history(template, tokenizer, CONVERSATION, whole)
    assert dropped == 0 and kept == CONVERSATION
    kept, dropped = fit_history(template, tokenizer, CONVERSATION, whole - 1)
    assert dropped == 2 and kept == [CONVERSATION[0], *CONVERSATION[3:]]


def test_session_commands_and_save(tmp_path):
    said = []
    session = ChatSession(lambda messages, on_text, on_note: (said.append(list(messages)), on_text("ok"))[1], system="Be kind.")
    assert session.ask("hello", lambda text: None) == "ok"
    assert said[0] == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hello"}]
    out = tmp_path / "chat.jsonl"
    assert "saved to" in session.command(f"/save {out}")
    assert "appended to" in session.command(f"/save {out}")
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and load_conversations(str(out)).conversations[0][-1] == {"role": "assistant", "content": "ok"}
    assert session.command("/system") == "system message cleared" and session.system is None
    assert "2 messages forgotten" in session.command("/reset") and session.messages == []
    assert "unknown command /nope" in session.command("/nope")
    assert session.command("just text") is None


def test_an_interrupted_reply_stays_as_far_as_it_got():
    def reply(messages, on_text, on_note):
        on_text("half an ans")
        raise KeyboardInterrupt

    session = ChatSession(reply)
    with pytest.raises(KeyboardInterrupt):
        session.ask("question", lambda text: None)
    assert session.messages[-1] == {"role": "assistant", "content": "half an ans"}


def test_train_task_chat_writes_a_chat_run(chat_run, runner):
    from kerasllm import runs

    run = runs.load_run(chat_run)
    assert run.task.name == "chat" and (chat_run / "chat_template.json").is_file()
    record = json.loads((chat_run / "data.json").read_text())
    assert record["shape"] == "messages" and record["train"]["conversations"] + record["validation"]["conversations"] == 200
    assert record["train"]["assistant_tokens"] > 0
    result = runner.invoke(cli.app, ["evaluate", str(chat_run), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["assistant_tokens"] == record["validation"]["assistant_tokens"]
    result = runner.invoke(cli.app, ["generate", str(chat_run), "--prompt", "Say hello to Ada.", "--temperature", "0", "--length", "5"])
    assert result.exit_code == 0, result.output
    assert "Say hello" not in result.output  # a reply, not the prompt continued


def test_finetune_task_chat_grows_the_base_vocabulary(tmp_path, lm_run, chat_data, runner):
    from kerasllm import runs
    from kerasllm.export.saving import load_model

    base = lm_run
    out = tmp_path / "tuned"
    result = runner.invoke(cli.app, ["finetune", str(base), "--task", "chat", "--data", str(chat_data), "--out", str(out), "--quiet",
                                     "--set", "train.steps_per_epoch=2", "--set", "train.batch_size=8", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    before, after = runs.load_run(base), runs.load_run(out)
    old, new = before.artifacts["tokenizer"], after.artifacts["tokenizer"]
    assert new.vocab_size == old.vocab_size + 3 and new.vocabulary[:old.vocab_size] == old.vocabulary
    assert json.loads((out / "data.json").read_text())["added_tokens"] == 3
    rows = load_model(out / "model.keras").get_layer("token_embedding").embeddings.shape[0]
    assert rows == new.vocab_size


def test_task_chat_is_refused_for_a_model_without_it(runner):
    result = runner.invoke(cli.app, ["train", "lstm-textgen", "--task", "chat"])
    assert result.exit_code == 2 and "cannot be trained for the chat task" in result.output


def test_conversations_with_empty_replies_are_left_out_with_a_note(tmp_path):
    from kerasllm.tasks.chat import Chat

    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]},
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ])
    loaded = load_conversations(str(path))
    assert len(loaded.conversations) == 2 and loaded.record["without_a_reply"] == 1 and loaded.record["empty_user_messages"] == 1
    notes = Chat().notes(dict(loaded.record, source=str(path)))
    assert len(notes) == 2 and "1 conversation" in notes[0] and "left out" in notes[0] and "empty user message" in notes[1]
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]}])
    with pytest.raises(UserError, match="only empty assistant messages"):
        load_conversations(str(empty))


def test_no_reply_of_zero_tokens(runner, trained_run):
    from tests.commands.test_cli import assert_user_error, invoke

    assert_user_error(invoke(runner, "generate", trained_run, "--prompt", "The ", "--max-length", "0"), "--max-length 0")
    assert_user_error(invoke(runner, "chat", trained_run, "--max-length", "0"), "--max-length 0")


def test_the_context_note_comes_once_and_before_the_reply():
    """#33: chat's context note came between `bot>` and the reply, on every turn."""
    from kerasllm.serve.session import reply

    def answer(messages, on_text, on_note):
        on_note("the conversation is longer than the model's context of 8 tokens; its oldest 2 messages are left out")
        on_text("hello")
        return "hello"

    shown = []
    session = ChatSession(answer)
    for _ in range(2):
        reply(session, "hi", lambda text: shown.append(("out", text)), lambda line: shown.append(("note", line)))
    assert [kind for kind, _ in shown] == ["note", "out", "out", "out", "out", "out", "out"]  # note, then bot> hello \n, twice
    assert "".join(text for kind, text in shown if kind == "out") == "bot> hello\nbot> hello\n"
    session.command("/reset")
    reply(session, "hi", lambda text: None, lambda line: shown.append(("note", line)))
    assert sum(kind == "note" for kind, _ in shown) == 2  # a new conversation hears it again


def test_ctrl_c_stops_a_reply_even_when_library_code_swallows_the_interrupt():
    """#33: chat's Ctrl-C was lost once under load (the reply ran on): a KeyboardInterrupt raised inside library code
    can be caught there. Now Ctrl-C marks the reply stopped and it stops at its next piece of text."""
    import os
    import signal

    from kerasllm.serve.session import reply

    def answer(messages, on_text, on_note):
        for index in range(20):
            if index == 3:
                try:  # a library's broad except around the call the signal landed in
                    os.kill(os.getpid(), signal.SIGINT)
                    for _ in range(1000):
                        pass
                except BaseException:
                    pass
            on_text(f"{index} ")
        return "all"

    shown = []
    session = ChatSession(answer)
    reply(session, "count", shown.append, lambda line: None)
    assert "".join(shown) == "bot> 0 1 2  [stopped]\n"
    assert session.messages[-1] == {"role": "assistant", "content": "0 1 2 "}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back after the reply
