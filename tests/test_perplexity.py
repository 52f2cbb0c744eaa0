"""Perplexity against a hand computation on a known toy distribution."""

import math
from types import SimpleNamespace

import pytest
import torch

from prunecli.errors import RunFailedError
from prunecli.evaluate.perplexity import perplexity


class FixedDistribution(torch.nn.Module):
    """Predicts the same next-token distribution ``p`` at every position, whatever the input."""

    def __init__(self, probabilities):
        super().__init__()
        self.logits = torch.log(torch.tensor(probabilities))

    def forward(self, input_ids):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1))


def test_perplexity_matches_hand_computation():
    p = [0.5, 0.25, 0.125, 0.125]
    windows = torch.tensor([[0, 1, 2, 3], [3, 0, 0, 1]])
    # Predicted tokens (all but the first of each window): 1,2,3 and 0,0,1.
    nll = -(math.log(0.25) + math.log(0.125) + math.log(0.125) + 2 * math.log(0.5) + math.log(0.25))
    expected_nll = nll / 6
    for batch_size in (1, 2):
        result = perplexity(FixedDistribution(p), windows, batch_size=batch_size, progress=False)
        assert result["nll"] == pytest.approx(expected_nll, rel=1e-6)
        assert result["ppl"] == pytest.approx(math.exp(expected_nll), rel=1e-6)
        assert result["eval_tokens"] == 8


def test_uniform_model_has_perplexity_equal_to_vocabulary_size():
    windows = torch.randint(0, 7, (3, 10))
    assert perplexity(FixedDistribution([1 / 7] * 7), windows, progress=False)["ppl"] == pytest.approx(7, rel=1e-5)


def test_non_finite_loss_fails_the_run_instead_of_reporting_a_number():
    class Broken(FixedDistribution):
        def forward(self, input_ids):
            return SimpleNamespace(logits=torch.full((*input_ids.shape, 4), float("nan")))

    with pytest.raises(RunFailedError, match="non-finite"):
        perplexity(Broken([0.25] * 4), torch.zeros(1, 4, dtype=torch.long), progress=False)
