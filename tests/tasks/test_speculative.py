"""Speculative decoding (`kerasllm generate RUN --draft DRAFT`, `kerasllm.speculative`): greedy text is the run's alone,
token for token, across the context's sliding window and for any number of draft tokens; sampled text follows the run's
distribution (the accept/reject rule, told apart from taking the draft's proposals as they come)."""

import numpy as np
import pytest

from kerasllm import generation
from tests.commands.test_cli import assert_user_error, invoke
from tests.conftest import TINY_LM


@pytest.fixture(scope="module")
def draft_run(tmp_path_factory, corpus_file, runner):
    """A smaller transformer-lm on the same text (the same characters: the same tokenizer), context 32 like `lm_run`."""
    out = tmp_path_factory.mktemp("draft") / "draft"
    settings = [arg for pair in zip(TINY_LM[::2], TINY_LM[1::2]) if pair[1] != "model_args.hidden_dim=16" for arg in pair]
    result = invoke(runner, "train", "transformer-lm", "--data", corpus_file, "--out", out, "--quiet", *settings,
                    "--set", "model_args.hidden_dim=8", "--set", "data.sequence_length=32", "--set", "model_args.max_sequence_length=32")
    assert result.exit_code == 0, result.output
    return out


def test_greedy_text_is_the_runs_alone_token_for_token(lm_run, draft_run):
    from kerasllm import runs, speculative
    from kerasllm.export.saving import load_model

    run, draft = runs.load_run(lm_run), runs.load_run(draft_run)
    model, draft_model = load_model(lm_run / "model.keras"), load_model(draft_run / "model.keras")
    tokenizer = run.artifacts["tokenizer"]
    target, proposer = speculative.decoders(model, draft_model, run.spec, draft.spec)
    prompt = [int(i) for i in tokenizer.encode("The history of")]
    (alone,) = generation.generate_ids(model, tokenizer, [np.asarray(prompt, np.int32)], 60, spec=run.spec,
                                       window=run.config.data.sequence_length, temperature=0.0)
    for k in (1, 4):  # 14 + 60 tokens: the context of 32 slides twice
        ids, counts = speculative.generate(target, proposer, tokenizer, prompt, 60, generation.Sampling(temperature=0.0), k)
        assert tokenizer.decode(ids) == alone and len(ids) == 60, k
        assert counts.passes < 60 or counts.accepted == 0  # each pass of the run gives a token at least
        assert 0 <= counts.accepted <= counts.proposed


def test_a_rejected_proposal_is_resampled_so_the_text_follows_the_runs_distribution():
    """One round of one proposal, 40,000 times: the token that comes out is distributed as the run's p, not as the
    draft's q (which taking the proposal as it comes would give)."""
    from kerasllm import speculative

    rng = np.random.default_rng(0)
    p_logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    q = np.array([0.1, 0.2, 0.3, 0.4])
    options = generation.Sampling(temperature=1.0)
    checked = np.stack([p_logits, p_logits])
    found = np.zeros(4)
    for _ in range(40_000):
        proposal = int(rng.choice(4, p=q))
        kept, chosen = speculative.judge(checked, [proposal], [q], options, [], rng)
        found[proposal if kept else chosen] += 1
    np.testing.assert_allclose(found / found.sum(), [0.5, 0.3, 0.15, 0.05], atol=0.01)
    assert np.abs(q - [0.5, 0.3, 0.15, 0.05]).max() > 0.3  # the draft's own distribution is far from it


def test_the_command_gives_the_runs_text_and_refuses_what_it_cannot_draft_for(runner, lm_run, draft_run, trained_run):
    args = ["--prompt", "The history of", "--temperature", "0", "--max-length", "40"]
    alone = invoke(runner, "generate", lm_run, *args)
    drafted = invoke(runner, "generate", lm_run, *args, "--draft", draft_run, "--draft-tokens", "3")
    assert drafted.exit_code == 0 and drafted.stdout == alone.stdout, drafted.output
    assert "draft tokens kept" in drafted.stderr and "tokens per pass of the target" in drafted.stderr
    assert_user_error(invoke(runner, "generate", lm_run, *args, "--draft", trained_run), "takes transformer-lm runs, and --draft is lstm-textgen")
    assert_user_error(invoke(runner, "generate", lm_run, *args, "--draft", draft_run, "--draft-tokens", "0"), "--draft-tokens")
    assert_user_error(invoke(runner, "generate", lm_run, *args, "--draft", draft_run, "--beam", "2"), "--beam yet); drop --draft")
