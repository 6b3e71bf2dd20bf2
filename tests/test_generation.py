import numpy as np

from kerasllm.generation import choose


def test_greedy_picks_the_most_likely_token_but_never_unknown():
    probabilities = np.array([0.9, 0.05, 0.03, 0.02])
    assert choose(probabilities, 0.0, 0, np.random.default_rng(0)) == 1


def test_top_k_only_samples_the_k_most_likely():
    probabilities = np.array([0.0, 0.4, 0.3, 0.2, 0.1])
    rng = np.random.default_rng(0)
    picks = {choose(probabilities, 1.0, 2, rng) for _ in range(200)}
    assert picks == {1, 2}


def test_low_temperature_sharpens():
    probabilities = np.array([0.0, 0.6, 0.4])
    rng = np.random.default_rng(0)
    cold = [choose(probabilities, 0.05, 0, rng) for _ in range(200)]
    warm = [choose(probabilities, 1.0, 0, rng) for _ in range(200)]
    assert cold.count(1) == 200 and 60 < warm.count(2) < 110
