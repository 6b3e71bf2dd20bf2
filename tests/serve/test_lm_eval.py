"""lm-evaluation-harness against `kerasllm serve`: its `local-completions` model scores a task on local data through
`/v1/completions` (echo, logprobs), with the run's Hugging Face tokenizer (`kerasllm export RUN --format hf`), and its
figure equals the log-likelihood kerasllm computes itself over the same rolling windows."""

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

    run = runs.load_run(lm_run)
    context = run.config.model_args.max_sequence_length
    served = load(lm_run)
    try:
        with running(create_app([served])) as url:
            results = simple_evaluate(
                model="local-completions", tasks=["kerasllm_rolling"], task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
                model_args={"base_url": f"{url}/v1/completions", "model": served.name, "tokenizer": str(tmp_path / "hf"),
                            "tokenizer_backend": "huggingface", "tokenized_requests": True, "max_length": context,
                            "num_concurrent": 1, "max_retries": 1},
                log_samples=False)
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
