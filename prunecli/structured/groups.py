"""The coupled weight slices of the prunable structures in a transformer block.

A *unit* is the smallest thing structured pruning removes, together with every slice that
must go with it for the block to stay consistent (all on the ``(out, in)`` view of a weight,
:func:`~prunecli.methods.targets.weight_matrix`; GPT-2's ``Conv1D`` stores it transposed):

* attention head ``h`` (d = head_dim): rows ``h*d .. h*d+d-1`` of q, k, v (and their bias
  entries) and the same columns of the output projection o;
* GQA, ``gqa=kv_groups``: KV group ``j`` = k/v rows of KV head ``j`` plus the q rows and o
  columns of the ``r = n_q / n_kv`` query heads ``j*r .. j*r+r-1`` that share it;
  ``gqa=query_heads``: one query head (q rows, o columns; k/v untouched);
* FFN neuron ``i``: row ``i`` of the input projections (gate/up, fc1, c_fc,
  intermediate.dense) and column ``i`` of the output projection (down, fc2, c_proj,
  output.dense).

A :class:`Family` says where these live in a block of one ``model_type``; to support a new
family, add an entry to :data:`FAMILIES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from prunecli.errors import PruneError
from prunecli.methods.targets import is_prunable
from prunecli.models.layout import blocks_of
from prunecli.registry import Registry


@dataclass(frozen=True)
class Family:
    """Where the prunable structures of one block live (paths relative to the block)."""

    attention: str  # module that computes the heads; replaced by EmptyAttention when none is left
    q: str
    k: str
    v: str  # q == k == v for a fused projection (GPT-2 c_attn: rows [q | k | v])
    o: str
    ffn_in: tuple[str, ...]
    ffn_out: str
    head_dim: Callable[[nn.Module], int]  # from the attention module
    set_heads: Callable[[nn.Module, int, int, int], None]  # (attention, n_q, n_kv, head_dim)
    # structure key -> config attribute that states it for every layer at once
    config_keys: dict[str, str] = field(default_factory=dict)
    explicit_head_dim: bool = False  # write config.head_dim so that fewer heads keep their width
    gqa: bool = False  # k/v may have fewer heads than q (num_key_value_heads)

    @property
    def fused_qkv(self) -> bool:
        return self.q == self.k == self.v


def _set_llama_heads(attention: nn.Module, n_q: int, n_kv: int, head_dim: int) -> None:
    attention.num_key_value_groups = n_q // n_kv


def _set_gpt2_heads(attention: nn.Module, n_q: int, n_kv: int, head_dim: int) -> None:
    attention.num_heads, attention.split_size = n_q, n_q * head_dim


def _set_opt_heads(attention: nn.Module, n_q: int, n_kv: int, head_dim: int) -> None:
    attention.num_heads = n_q


def _set_bert_heads(attention: nn.Module, n_q: int, n_kv: int, head_dim: int) -> None:
    attention.num_attention_heads, attention.all_head_size = n_q, n_q * head_dim


FAMILIES: Registry[Family] = Registry("model family for structured pruning")

_LLAMA = Family(
    attention="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
    ffn_in=("mlp.gate_proj", "mlp.up_proj"), ffn_out="mlp.down_proj",
    head_dim=lambda attention: attention.head_dim, set_heads=_set_llama_heads,
    config_keys={"num_attention_heads": "num_attention_heads", "num_key_value_heads": "num_key_value_heads",
                 "intermediate_size": "intermediate_size"},
    explicit_head_dim=True, gqa=True,
)
for _name in ("llama", "mistral", "qwen2"):
    FAMILIES.register(_name)(_LLAMA)
FAMILIES.register("gpt2")(Family(
    attention="attn", q="attn.c_attn", k="attn.c_attn", v="attn.c_attn", o="attn.c_proj",
    ffn_in=("mlp.c_fc",), ffn_out="mlp.c_proj",
    head_dim=lambda attention: attention.head_dim, set_heads=_set_gpt2_heads,
    config_keys={"intermediate_size": "n_inner"},
))
FAMILIES.register("opt")(Family(
    attention="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.out_proj",
    ffn_in=("fc1",), ffn_out="fc2",
    head_dim=lambda attention: attention.head_dim, set_heads=_set_opt_heads,
    config_keys={"intermediate_size": "ffn_dim"},
))
FAMILIES.register("bert")(Family(
    attention="attention.self", q="attention.self.query", k="attention.self.key", v="attention.self.value",
    o="attention.output.dense", ffn_in=("intermediate.dense",), ffn_out="output.dense",
    head_dim=lambda attention: attention.attention_head_size, set_heads=_set_bert_heads,
    config_keys={"intermediate_size": "intermediate_size"},
))


def family_of(model: nn.Module) -> Family:
    """The :class:`Family` of ``model.config.model_type``, or a PruneError naming it."""
    return FAMILIES.get(getattr(getattr(model, "config", None), "model_type", None))


def layer_at(block: nn.Module, path: str) -> nn.Module:
    """The Linear / Conv1D at ``path`` in ``block``; anything else is a PruneError naming its type."""
    module = block.get_submodule(path)
    if not is_prunable(module):
        raise PruneError(f"structured pruning: {path} is a {type(module).__name__}, not a Linear or Conv1D; this module type is not supported")
    return module


class EmptyAttention(nn.Module):
    """An attention module with no head left: its output is the output projection's bias (or zeros).

    Keeps the output projection (zero input columns) when it lives inside the attention module,
    so the state dict keeps its bias; returns ``(output, None)`` like the attention it replaces.
    A KV cache still gets this layer's (zero-head) entries, so its sequence length stays right.
    """

    def __init__(self, out_name: str | None = None, out: nn.Module | None = None, layer_idx: int | None = None, head_dim: int = 1):
        super().__init__()
        self.out_name, self.layer_idx, self.head_dim = out_name, layer_idx, head_dim
        if out_name is not None:
            self.add_module(out_name, out)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        cache = kwargs.get("past_key_values")
        if cache is not None and self.layer_idx is not None:
            no_heads = hidden_states.new_zeros(hidden_states.shape[0], 0, hidden_states.shape[1], self.head_dim)
            getattr(cache, "self_attention_cache", cache).update(no_heads, no_heads, self.layer_idx)
        empty = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        return (getattr(self, self.out_name)(empty) if self.out_name else empty), None


def features(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` of a Linear or Conv1D."""
    from transformers.pytorch_utils import Conv1D

    rows, cols = module.weight.shape
    return (cols, rows) if isinstance(module, Conv1D) else (rows, cols)


def head_counts(family: Family, block: nn.Module) -> tuple[int, int, int]:
    """``(n_q, n_kv, head_dim)`` of a block, read from the weight shapes (0, 0, 0 with no head left)."""
    attention = block.get_submodule(family.attention)
    if isinstance(attention, EmptyAttention):
        return 0, 0, 0
    d = family.head_dim(attention)
    if family.fused_qkv:
        n = features(layer_at(block, family.q))[0] // (3 * d)
        return n, n, d
    return features(layer_at(block, family.q))[0] // d, features(layer_at(block, family.k))[0] // d, d


def ffn_width(family: Family, block: nn.Module) -> int:
    """Number of FFN neurons of a block (input features of the output projection)."""
    return features(layer_at(block, family.ffn_out))[1]


@dataclass
class Coupling:
    """Slices of one layer owned by each unit: unit ``u`` owns ``index[u]`` along ``axis``.

    ``axis`` 0 = rows (outputs; the bias entries go too), 1 = columns (inputs).
    ``role`` ``"out"`` marks the output projection's input columns (activations, FLAP).
    """

    path: str
    axis: int
    index: torch.Tensor  # (units, width) long
    role: str = "in"


@dataclass
class BlockGroups:
    """All units of one kind in one block, with their coupled slices.

    ``query_heads[u]`` / ``kv_heads[u]``: the heads unit ``u`` removes (empty for neurons).
    """

    kind: str  # "heads" | "ffn"
    block: int
    couplings: list[Coupling]
    query_heads: torch.Tensor  # (units, q per unit) long
    kv_heads: torch.Tensor  # (units, kv per unit) long

    @property
    def units(self) -> int:
        return self.couplings[0].index.shape[0] if self.couplings else 0

    def slices(self, units: torch.Tensor) -> list[tuple[str, int, torch.Tensor]]:
        """``(path, axis, indices)`` of the given units, one entry per coupling."""
        return [(c.path, c.axis, c.index[units].reshape(-1)) for c in self.couplings]


def head_groups(family: Family, block: nn.Module, index: int, gqa: str = "kv_groups") -> BlockGroups:
    """Head units of a block: heads (MHA), KV groups or query heads (GQA, see module doc)."""
    n_q, n_kv, _ = head_counts(family, block)
    r = n_q // n_kv if n_kv else 1
    if gqa == "query_heads" or r == 1:  # unit = one query head (MHA: with its own k/v head)
        q_heads = torch.arange(n_q)[:, None]
        kv_heads = q_heads if r == 1 else torch.empty(n_q, 0, dtype=torch.long)
    elif gqa == "kv_groups":
        kv_heads = torch.arange(n_kv)[:, None]
        q_heads = kv_heads * r + torch.arange(r)[None, :]
    else:
        raise PruneError(f"unknown gqa mode {gqa!r} (choose from: kv_groups, query_heads)")
    return heads_as_units(family, block, index, q_heads, kv_heads)


def heads_as_units(family: Family, block: nn.Module, index: int, q_heads: torch.Tensor, kv_heads: torch.Tensor) -> BlockGroups:
    """Units that remove query heads ``q_heads[u]`` and KV heads ``kv_heads[u]`` (q/k/v rows, o columns)."""
    n_q, n_kv, d = head_counts(family, block)
    if n_q == 0:
        empty = torch.empty(0, 1, dtype=torch.long)
        return BlockGroups("heads", index, [], empty, empty)
    for path in {family.q, family.k, family.v, family.o}:
        layer_at(block, path)
    k_offset, v_offset = (n_q * d, (n_q + n_kv) * d) if family.fused_qkv else (0, 0)
    channels = lambda heads: (heads[:, :, None] * d + torch.arange(d)).reshape(len(heads), -1)  # noqa: E731
    q_cols = channels(q_heads)
    couplings = [Coupling(family.q, 0, q_cols), Coupling(family.o, 1, q_cols, role="out")]
    if kv_heads.shape[1]:
        kv_rows = channels(kv_heads)
        couplings[1:1] = [Coupling(family.k, 0, kv_rows + k_offset), Coupling(family.v, 0, kv_rows + v_offset)]
    return BlockGroups("heads", index, couplings, q_heads, kv_heads)


def ffn_groups(family: Family, block: nn.Module, index: int, gqa: str = "") -> BlockGroups:
    """Neuron units of a block's FFN: rows of every input projection, columns of the output one."""
    n = ffn_width(family, block)
    for path in family.ffn_in:
        layer_at(block, path)
    neurons = torch.arange(n)[:, None]
    couplings = [Coupling(path, 0, neurons) for path in family.ffn_in] + [Coupling(family.ffn_out, 1, neurons, role="out")]
    empty = torch.empty(n, 0, dtype=torch.long)
    return BlockGroups("ffn", index, couplings, empty, empty)


GROUPS: dict[str, Callable[[Family, nn.Module, int, str], BlockGroups]] = {"heads": head_groups, "ffn": ffn_groups}


def model_groups(model: nn.Module, kind: str, gqa: str = "kv_groups") -> list[BlockGroups]:
    """The units of ``kind`` (``heads`` | ``ffn``) of every block of ``model``."""
    family = family_of(model)
    _, blocks = blocks_of(model)
    return [GROUPS[kind](family, block, index, gqa) for index, block in enumerate(blocks)]
