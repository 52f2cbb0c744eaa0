"""Causal self-attention a chunk of queries at a time, for the layer-wise calibration passes on CPU (#19).

For a chunk of ``C`` query positions ``[s, e)``, with the query heads of one key/value head (GQA)
stacked as rows, ``O[s:e] = softmax(Q[s:e] K[:e]^T * scale, keys j > i masked) V[:e]``: the chunk
attends only to the keys up to its end, so the work above the diagonal is skipped but for the ``C x C``
corner of each chunk, and each chunk's scores (``heads_per_kv * C x e``) stay in cache. On the 2-core
CPU these batched matmuls beat the small tiles of PyTorch's CPU flash-attention kernel (64 queries
against every key up to theirs, online softmax): one SmolLM2-135M block's two calibration passes, sdpa
and chunked in alternation, ran 2-9% faster (``python scripts/block_profile.py --batch 8 --attention``;
the share moves with this VM's phase). The softmax is taken over whole rows rather than online, so
results equal the flash kernel's up to float summation order, not to the bit.

:func:`chunked_causal_attention` is registered in transformers' ``AttentionInterface`` as
:data:`IMPLEMENTATION`; :func:`calibration_attention` switches a model to it (from ``sdpa``) for the
duration of the block passes only, on CPU. Anything it does not cover (an explicit mask, dropout, sliding
windows, soft-capping, attention sinks, cached keys, another dtype or device, autograd) goes to ``sdpa`` unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

IMPLEMENTATION = "prunecli_chunked_causal"
CHUNK = 32  # query positions per chunk: 16-32 ran fastest on the 2-core VM, 64 and up fall out of cache
_CHANGES_THE_MATH = ("softcap", "sliding_window", "s_aux", "sinks", "position_bias")


def covered(module: nn.Module, query: torch.Tensor, key: torch.Tensor, attention_mask, dropout: float, is_causal, kwargs: dict) -> bool:
    """Whether the call is plain causal self-attention in fp32 on CPU, without autograd (else it goes to ``sdpa``)."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    autograd = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad)  # the loop's products write in place
    return (causal and not autograd and attention_mask is None and not dropout and query.device.type == "cpu"
            and query.dtype == key.dtype == torch.float32 and query.shape[2] == key.shape[2] > 1
            and query.shape[1] % key.shape[1] == 0 and not any(kwargs.get(name) is not None for name in _CHANGES_THE_MATH))


def chunked_causal_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: ``query`` ``[b, h, L, d]``, ``key``/``value`` ``[b, kv, L, d]``;
    returns ``([b, L, h, d], None)`` as ``sdpa_attention_forward`` does."""
    if not covered(module, query, key, attention_mask, dropout, is_causal, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    batch, heads, length, width = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads  # query head h reads key/value head h // group
    scale = scaling if scaling is not None else width ** -0.5
    # rows (position, head of the group) per (batch, kv head): a chunk of positions is a run of rows
    q = query.reshape(batch, kv_heads, group, length, width).transpose(2, 3).reshape(batch * kv_heads, length * group, width)
    k = (key * scale).reshape(batch * kv_heads, length, width)
    v = value.reshape(batch * kv_heads, length, width)
    out = query.new_empty(batch, length, kv_heads, group, width)
    rows = out.permute(0, 2, 1, 3, 4)  # [b, kv, L, group, d], a view of out
    above = torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=query.device).triu_(1)
    buffer = query.new_empty(batch * kv_heads * min(CHUNK, length) * group * length)  # every chunk's scores, in turn
    for start in range(0, length, CHUNK):
        end = min(start + CHUNK, length)
        scores = buffer[: batch * kv_heads * (end - start) * group * end].view(batch * kv_heads, (end - start) * group, end)
        torch.bmm(q[:, start * group : end * group], k[:, :end].transpose(1, 2), out=scores)
        corner = scores.view(batch * kv_heads, end - start, group, end)[..., start:end]
        corner.masked_fill_(above[: end - start, None, : end - start], float("-inf"))
        torch.softmax(scores, -1, out=scores)
        rows[:, :, start:end] = torch.bmm(scores, v[:, :end]).view(batch, kv_heads, end - start, group, width)
    return out.view(batch, length, heads, width), None


AttentionInterface.register(IMPLEMENTATION, chunked_causal_attention)


@contextmanager
def calibration_attention(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Run ``model``'s attention as :func:`chunked_causal_attention` inside, where it is ``sdpa`` on CPU."""
    config = getattr(model, "config", None)
    if device.type != "cpu" or getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    config._attn_implementation = IMPLEMENTATION
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"
