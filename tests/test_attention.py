"""Causal attention a chunk of queries at a time (the layer-wise passes' attention on CPU)."""

import pytest
import torch
from hypothesis import given, settings, strategies as st
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from prunecli.models import attention
from prunecli.models.attention import IMPLEMENTATION, calibration_attention, chunked_causal_attention
from tests.conftest import covered_in_wanda_passes, tiny_model


class Module(torch.nn.Module):
    is_causal = True


def causal_attention_float64(query, key, value, scale):
    """The definition, in float64: every query head h reads key/value head h // (heads / kv_heads);
    ``softmax(q k^T * scale)`` over the keys at or before the query's position, times ``v``; ``[b, L, h, d]``."""
    group = query.shape[1] // key.shape[1]
    key, value = (t.double().repeat_interleave(group, dim=1) for t in (key, value))
    scores = query.double() @ key.transpose(-1, -2) * scale
    length = query.shape[2]
    scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
    return (torch.softmax(scores, -1) @ value).transpose(1, 2)


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 3), kv_heads=st.integers(1, 3), group=st.integers(1, 3), length=st.integers(2, 2 * attention.CHUNK + 5),
       width=st.sampled_from([4, 8, 16]), scaling=st.sampled_from([None, 0.3]), seed=st.integers(0, 2**16))
def test_chunked_attention_equals_causal_softmax_attention(batch, kv_heads, group, length, width, scaling, seed):
    """Any batch, GQA grouping, width and length (one chunk, several, a partial last one), the module's
    scaling or the default 1/sqrt(d): the float64 definition, to float32 rounding."""
    generator = torch.Generator().manual_seed(seed)
    # transformers hands over [b, heads, L, d] views of [b, L, heads, d] projections
    query = torch.randn(batch, length, kv_heads * group, width, generator=generator).transpose(1, 2)
    key, value = (torch.randn(batch, length, kv_heads, width, generator=generator).transpose(1, 2) for _ in range(2))
    output, weights = chunked_causal_attention(Module(), query, key, value, None, scaling=scaling)
    expected = causal_attention_float64(query, key, value, scaling if scaling is not None else width ** -0.5)
    assert weights is None and output.shape == (batch, length, kv_heads * group, width) and output.is_contiguous()
    torch.testing.assert_close(output.double(), expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("case", ["mask", "dropout", "sliding_window", "float64", "not_causal", "one_query", "autograd"])
def test_what_chunked_attention_does_not_cover_goes_to_sdpa_unchanged(case):
    generator = torch.Generator().manual_seed(0)
    length = 1 if case == "one_query" else 40
    query = torch.randn(2, 4, length, 8, generator=generator)
    key, value = torch.randn(2, 2, length, 8, generator=generator), torch.randn(2, 2, length, 8, generator=generator)
    module, kwargs, mask = Module(), {}, None
    module.num_key_value_groups = 2
    if case == "mask":
        mask = torch.zeros(2, 1, length, length).masked_fill(torch.rand(length, length, generator=generator) < 0.3, float("-inf"))
        mask.diagonal(dim1=-2, dim2=-1).zero_()
    elif case == "sliding_window":
        kwargs["sliding_window"] = 8
    elif case == "float64":
        query, key, value = query.double(), key.double(), value.double()
    elif case == "not_causal":
        module.is_causal = False
    elif case == "autograd":
        query.requires_grad_()
    dropout = 0.5 if case == "dropout" else 0.0
    torch.manual_seed(1)
    expected = sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, **kwargs)[0]
    torch.manual_seed(1)
    assert torch.equal(chunked_causal_attention(module, query, key, value, mask, dropout=dropout, **kwargs)[0], expected)


def test_calibration_attention_switches_an_sdpa_model_on_cpu_only_while_inside():
    model = tiny_model("llama")
    assert model.config._attn_implementation == "sdpa"
    windows = torch.randint(0, 97, (3, 2 * attention.CHUNK + 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense = model(input_ids=windows).logits
        with calibration_attention(model, torch.device("cpu")):
            assert model.config._attn_implementation == IMPLEMENTATION
            chunked = model(input_ids=windows).logits
        assert model.config._attn_implementation == "sdpa"
        with pytest.raises(RuntimeError), calibration_attention(model, torch.device("cpu")):
            raise RuntimeError
        assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(chunked, dense, atol=1e-5, rtol=1e-5)
    with calibration_attention(model, torch.device("meta")):  # another device: left as it is
        assert model.config._attn_implementation == "sdpa"
    model.config._attn_implementation = "eager"
    with calibration_attention(model, torch.device("cpu")):  # another implementation: left as it is
        assert model.config._attn_implementation == "eager"


def test_the_layerwise_passes_run_chunked_attention(monkeypatch):
    """Wanda's block passes on a tiny Llama call the chunked attention (and it computes, not delegates)."""
    covered, model = covered_in_wanda_passes(monkeypatch, attention)
    assert covered and all(covered)
    assert model.config._attn_implementation == "sdpa"
