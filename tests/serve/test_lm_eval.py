"""lm-evaluation-harness against `kerasllm serve`: its `local-completions` model scores tasks on local data through
`/v1/completions` (echo, logprobs), with the run's Hugging Face tokenizer (`kerasllm export RUN --format hf`): a
`loglikelihood_rolling` task, whose figure equals the log-likelihood kerasllm computes itself over the same rolling
windows, and an SST-2-style two-choice task, whose every choice's log-likelihood (and so its accuracy) is kerasllm's."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.conftest import need
from tests.serve.test_serve import load, running

pytestmark = pytest.mark.slow

TEXTS = ["The quick brown fox jumps over the lazy dog, and the dog sleeps on.",
         "A garden of river stones: the window looks out on it every morning."]
TASK = """task: kerasllm_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""
REVIEWS = [("a gripping , funny film", 1), ("dull and lifeless", 0), ("the best of the year", 1),
           ("a waste of two hours", 0), ("warm , wise and moving", 1), ("it never comes alive", 0)]
# each continuation as lm-eval sends it, its delimiter then the choice; every review, ":" and choice fit the tiny run's
# context of 32 (lm-eval cuts a longer context from the left, the server would read it in windows)
CHOICES = [" bad", " good"]
TWO_CHOICE = """task: kerasllm_sst2
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{sentence}}}}:"
doc_to_target: label
doc_to_choice: ["bad", "good"]  # after lm-eval's target_delimiter, " "
metric_list:
  - metric: acc
"""


def test_lm_eval_scores_a_served_run_as_kerasllm_does(lm_run, runner, tmp_path, monkeypatch):
    need("lm_eval")
    need("transformers")
    from lm_eval import simple_evaluate, utils
    from lm_eval.tasks import TaskManager

    from kerasllm import runs
    from kerasllm.export.saving import load_model
    from kerasllm.serve.app import create_app
    from kerasllm.serve.scoring import position_logprobs
    from tests.commands.test_cli import invoke

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    exported = invoke(runner, "export", lm_run, "--format", "hf", "--out", tmp_path / "hf")
    assert exported.exit_code == 0, exported.output
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS), encoding="utf-8")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "kerasllm_rolling.yaml").write_text(TASK.format(data=data), encoding="utf-8")
    reviews = tmp_path / "sst2.jsonl"
    reviews.write_text("".join(json.dumps({"sentence": text, "label": label}) + "\n" for text, label in REVIEWS), encoding="utf-8")
    (tmp_path / "tasks" / "kerasllm_sst2.yaml").write_text(TWO_CHOICE.format(data=reviews), encoding="utf-8")

    run = runs.load_run(lm_run)
    context = run.config.model_args.max_sequence_length
    served = load(lm_run)
    try:
        with running(create_app([served])) as url:
            results = simple_evaluate(
                model="local-completions", tasks=["kerasllm_rolling", "kerasllm_sst2"],
                task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
                model_args={"base_url": f"{url}/v1/completions", "model": served.name, "tokenizer": str(tmp_path / "hf"),
                            "tokenizer_backend": "huggingface", "tokenized_requests": True, "max_length": context,
                            "num_concurrent": 1, "max_retries": 1},
                log_samples=True)
    finally:
        served.engine.stop()
    theirs = results["results"]["kerasllm_rolling"]["bits_per_byte,none"]

    # kerasllm's own: the same windows (lm-eval's: it keeps one position of max_length for the token it asks after each
    # prompt, so its windows are max_length - 2 tokens after one of context), each token from the model's own softmax
    tokenizer, model = run.artifacts["tokenizer"], load_model(lm_run / "model.keras")
    total, size, usable = 0.0, 0, context - 1
    for text in TEXTS:
        ids = [int(i) for i in tokenizer.encode(text)]
        for context_ids, continuation in map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                ids, prefix_token=tokenizer.special_id("bos"), max_seq_len=usable - 1, context_len=1)):
            assert len(context_ids + continuation) <= usable
            window = np.asarray(context_ids + continuation, np.int32)
            table = position_logprobs(model, window, context)
            total += sum(float(table[p - 1, window[p]]) for p in range(len(context_ids), len(window)))
        size += len(text.encode("utf-8"))
    ours = -total / size / math.log(2)
    assert f"{theirs:.3g}" == f"{ours:.3g}", (theirs, ours)

    # the two-choice task: each choice's log-likelihood after its prompt, as kerasllm computes it, and the accuracy
    right = 0
    for sample in sorted(results["samples"]["kerasllm_sst2"], key=lambda sample: sample["doc_id"]):
        text, label = REVIEWS[sample["doc_id"]]
        scores = choice_scores(model, tokenizer, context, f"{text}:")
        theirs_scores = [float(response[0][0]) for response in sample["resps"]]
        np.testing.assert_allclose(theirs_scores, scores, atol=1e-3)
        right += int(np.argmax(scores) == label)
    assert results["results"]["kerasllm_sst2"]["acc,none"] == pytest.approx(right / len(REVIEWS))


def choice_scores(model, tokenizer, context: int, prompt_text: str) -> list[float]:
    """kerasllm's log-likelihood of each of `CHOICES` after `prompt_text`, from the model's own softmax."""
    from kerasllm.serve.scoring import position_logprobs

    prompt, scores = [int(i) for i in tokenizer.encode(prompt_text)], []
    for choice in CHOICES:
        window = np.asarray(prompt + [int(i) for i in tokenizer.encode(choice)], np.int32)
        table = position_logprobs(model, window, context)
        scores.append(sum(float(table[p - 1, window[p]]) for p in range(len(prompt), len(window))))
    return scores
