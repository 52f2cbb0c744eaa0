"""Mask selection: exact counts, deterministic ties, N:M, pattern parsing."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunecli.errors import PruneError
from prunecli.methods.masks import global_masks, kth_smallest, layerwise_mask, lowest_k, nm_mask, parse_pattern, prune_count, rowwise_mask

few_levels = st.integers(min_value=1, max_value=5)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 400), sparsity=st.floats(0, 0.999), levels=few_levels, seed=st.integers(0, 10_000))
def test_lowest_k_prunes_exactly_k_with_ties_to_lower_index(n, sparsity, levels, seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (n,), generator=generator).float()  # heavy ties
    k = prune_count(n, sparsity)
    mask = lowest_k(scores, k)
    assert int(mask.sum()) == k == math.floor(sparsity * n + 1e-6)
    # Same as a stable ascending sort: the first k indices of the sorted order.
    expected = torch.zeros(n, dtype=torch.bool)
    expected[torch.sort(scores, stable=True).indices[:k]] = True
    assert torch.equal(mask, expected)


def same_value(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a, b) or bool(a.isnan() and b.isnan())


@settings(max_examples=80, deadline=None)
@given(values=st.lists(st.one_of(st.floats(width=32), st.sampled_from([0.0, -0.0, 1.0])), min_size=1, max_size=300),
       data=st.data())
def test_kth_smallest_is_kthvalue_for_any_scores(values, data):
    """Ties, zeros of either sign, infinities, NaN: samples of 2-8 put the sampled bracket (and its misses) to work on
    inputs this small."""
    scores = torch.tensor(values, dtype=torch.float32)
    k = data.draw(st.integers(1, len(values)))
    expected = torch.kthvalue(scores, k).values
    for sample in (2, 3, 8):
        assert same_value(kth_smallest(scores, k, sample), expected)


def test_kth_smallest_selects_among_a_few_percent_of_many_scores(monkeypatch):
    """200,000 scores with ties: the same value as kthvalue over all, from one kthvalue over < 10% of them."""
    scores = (torch.rand(200_000, generator=torch.Generator().manual_seed(0)) * 5000).floor()
    expected = torch.kthvalue(scores, 123_457).values
    sizes = []
    kthvalue = torch.kthvalue
    monkeypatch.setattr(torch, "kthvalue", lambda values, k: sizes.append(values.numel()) or kthvalue(values, k))
    assert torch.equal(kth_smallest(scores, 123_457), expected)
    assert len(sizes) == 1 and sizes[0] < 20_000


def test_prune_count_is_robust_to_float_error():
    assert prune_count(100, 0.29) == 29
    assert prune_count(576, 0.7) == 403  # int(576 * 0.7) as in the Wanda code
    assert prune_count(10, 0.0) == 0


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 8), cols=st.integers(1, 64), sparsity=st.floats(0, 0.999), seed=st.integers(0, 1000))
def test_rowwise_and_layerwise_counts(rows, cols, sparsity, seed):
    scores = torch.randint(0, 3, (rows, cols), generator=torch.Generator().manual_seed(seed)).float()
    assert torch.all(rowwise_mask(scores, sparsity).sum(1) == prune_count(cols, sparsity))
    assert int(layerwise_mask(scores, sparsity).sum()) == prune_count(rows * cols, sparsity)


@settings(max_examples=80, deadline=None)
@given(rows=st.integers(1, 8), cols=st.integers(1, 64), sparsity=st.floats(0, 1), levels=few_levels, seed=st.integers(0, 10_000))
def test_rowwise_mask_is_the_first_k_of_a_stable_sort_of_each_row(rows, cols, sparsity, levels, seed):
    scores = torch.randint(0, levels, (rows, cols), generator=torch.Generator().manual_seed(seed)).float()  # heavy ties
    k = prune_count(cols, sparsity)
    expected = torch.zeros(rows, cols, dtype=torch.bool).scatter_(1, torch.sort(scores, dim=1, stable=True).indices[:, :k], True)
    assert torch.equal(rowwise_mask(scores, sparsity), expected)


def test_global_mask_uses_one_threshold_across_matrices():
    small, large = torch.full((4, 4), 0.1), torch.full((4, 4), 10.0)
    masks = global_masks([small, large], 0.5)
    assert masks[0].all() and not masks[1].any()


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), groups=st.integers(1, 8), nm=st.sampled_from([(1, 2), (2, 4), (4, 8), (1, 4), (3, 4)]), seed=st.integers(0, 1000))
def test_nm_mask_keeps_n_of_every_m(rows, groups, nm, seed):
    n, m = nm
    scores = torch.randint(0, 2, (rows, groups * m), generator=torch.Generator().manual_seed(seed)).float()
    mask = nm_mask(scores, n, m)
    assert torch.all(mask.view(rows, groups, m).sum(-1) == m - n)
    kept = scores.masked_fill(mask, float("-inf")).view(rows, groups, m).max(-1).values
    pruned = scores.masked_fill(~mask, float("inf")).view(rows, groups, m).min(-1).values
    assert torch.all(kept >= pruned)  # never prunes a larger score than one it keeps


def test_nm_mask_rejects_indivisible_dimension_naming_the_layer():
    with pytest.raises(PruneError, match="layers.0.mlp.down_proj"):
        nm_mask(torch.rand(2, 6), 2, 4, layer="layers.0.mlp.down_proj")


def test_parse_pattern():
    assert parse_pattern("unstructured", 0.3) is None
    assert parse_pattern("2:4", 0.5) == (2, 4)
    with pytest.raises(PruneError, match="sparsity 0.75"):
        parse_pattern("1:4", 0.5)
    with pytest.raises(PruneError):
        parse_pattern("4:2", 0.5)
    with pytest.raises(PruneError):
        parse_pattern("two:four", 0.5)
