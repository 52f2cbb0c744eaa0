"""Physical removal: smaller layers, fewer heads, fewer blocks, and a config that says so.

* :func:`slice_layer`: a new Linear / Conv1D holding the kept rows and columns (and bias);
* :func:`remove_units`: drop units' slices from a block and fix the attention attributes
  (head counts, GQA ratio, split size); no head left -> :class:`EmptyAttention`;
* :func:`remove_blocks`: delete blocks, renumber ``layer_idx``, fix ``num_hidden_layers``;
* :func:`sync_config`: write the new shapes into the config. A value shared by every layer
  goes into the family's own key (``intermediate_size``, ``num_attention_heads`` + explicit
  ``head_dim``, ...), so plain ``from_pretrained`` rebuilds the model; per-layer shapes (and
  biases added by FLAP) go into ``config.prunecli_structure``::

      {"intermediate_size": [96, 64, ...], "num_attention_heads": [...],
       "num_key_value_heads": [...], "added_bias": ["0.mlp.down_proj", ...]}

* :func:`restore_structure`: reshape a model freshly built from such a config, so that the
  saved state dict loads into it (:mod:`prunecli.structured.loading`).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from prunecli.errors import PruneError
from prunecli.methods.targets import weight_matrix
from prunecli.models.layout import blocks_of
from prunecli.structured.groups import (
    BlockGroups, EmptyAttention, Family, family_of, features, ffn_groups, ffn_width, head_counts, heads_as_units,
)

STRUCTURE_KEY = "prunecli_structure"


def slice_layer(module: nn.Module, keep_out: torch.Tensor, keep_in: torch.Tensor) -> nn.Module:
    """A new layer of the same type with rows ``keep_out`` and columns ``keep_in`` of the ``(out, in)`` weight."""
    from transformers.pytorch_utils import Conv1D

    weight = weight_matrix(module)[keep_out][:, keep_in]
    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        new = Conv1D(len(keep_out), len(keep_in)) if isinstance(module, Conv1D) else nn.Linear(len(keep_in), len(keep_out), bias=module.bias is not None)
    new.weight = nn.Parameter((weight.t() if isinstance(module, Conv1D) else weight).contiguous(), module.weight.requires_grad)
    if module.bias is not None:
        new.bias = nn.Parameter(module.bias.data[keep_out].clone(), module.bias.requires_grad)
    if getattr(module, "_prunecli_added_bias", False):
        new._prunecli_added_bias = True
    new.train(module.training)
    return new


def _kept(size: int, dropped: list[torch.Tensor]) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    for index in dropped:
        keep[index.to(torch.long)] = False
    return keep.nonzero().reshape(-1)


@torch.no_grad()
def remove_units(block: nn.Module, family: Family, groups: BlockGroups, units: torch.Tensor) -> None:
    """Physically remove ``units`` of ``groups`` from ``block`` (see module doc)."""
    if len(units) == 0:
        return
    n_q, n_kv, d = head_counts(family, block) if groups.kind == "heads" else (0, 0, 0)
    dropped: dict[str, tuple[list, list]] = {}
    for path, axis, index in groups.slices(units):
        dropped.setdefault(path, ([], []))[axis].append(index)
    for path, (rows, columns) in dropped.items():
        layer = block.get_submodule(path)
        out_features, in_features = features(layer)
        block.set_submodule(path, slice_layer(layer, _kept(out_features, rows), _kept(in_features, columns)))
    if groups.kind == "heads":
        n_q -= len(groups.query_heads[units].unique())
        n_kv -= len(groups.kv_heads[units].unique())
        set_head_count(block, family, n_q, n_kv, d)
    elif hasattr(parent := block.get_submodule(family.ffn_out.rpartition(".")[0]), "intermediate_size"):
        parent.intermediate_size = ffn_width(family, block)


def set_head_count(block: nn.Module, family: Family, n_q: int, n_kv: int, head_dim: int) -> None:
    """Tell the attention module its new head counts, or replace it by :class:`EmptyAttention`."""
    attention = block.get_submodule(family.attention)
    if n_q > 0:
        family.set_heads(attention, n_q, n_kv, head_dim)
        return
    inside = family.o.startswith(family.attention + ".")
    out_name = family.o[len(family.attention) + 1:] if inside else None
    empty = EmptyAttention(out_name, block.get_submodule(family.o) if inside else None, getattr(attention, "layer_idx", None), head_dim)
    block.set_submodule(family.attention, empty)


def remove_blocks(model: nn.Module, indices: list[int]) -> None:
    """Delete blocks ``indices``; renumber ``layer_idx``; fix ``num_hidden_layers`` (and ``layer_types``)."""
    _, blocks = blocks_of(model)
    config, doomed = model.config, sorted(set(indices))
    if any(not 0 <= i < len(blocks) for i in doomed):
        raise PruneError(f"layers_to_remove={indices}: block indices must be in 0..{len(blocks) - 1}")
    if len(doomed) == len(blocks):
        raise PruneError(f"layers_to_remove={indices} would remove every block of the model")
    kept = [i for i in range(len(blocks)) if i not in doomed]
    if getattr(config, "scale_attn_by_inverse_layer_idx", False) and kept != list(range(len(kept))):
        raise PruneError("this GPT-2 scales attention by 1/(layer_idx+1): renumbering blocks would change it; remove only the last blocks")
    for index in reversed(doomed):
        del blocks[index]
    for new_index, block in enumerate(blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    config.num_hidden_layers = len(blocks)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in kept]
    sync_config(model)


def layer_shapes(model: nn.Module) -> dict[str, list]:
    """Per-block head counts and FFN widths, read from the weights."""
    family = family_of(model)
    _, blocks = blocks_of(model)
    counts = [head_counts(family, block) for block in blocks]
    shapes = {"num_attention_heads": [c[0] for c in counts], "intermediate_size": [ffn_width(family, b) for b in blocks]}
    if family.gqa:
        shapes["num_key_value_heads"] = [c[1] for c in counts]
    return shapes


def _config_default(config, key: str) -> int:
    heads = config.num_attention_heads
    return {"num_attention_heads": heads, "num_key_value_heads": getattr(config, "num_key_value_heads", None) or heads}.get(key, -1)


def sync_config(model: nn.Module) -> None:
    """Write the model's actual shapes into its config (see module doc)."""
    family, config = family_of(model), model.config
    _, blocks = blocks_of(model)
    structure: dict[str, list] = {}
    head_dims = {head_counts(family, b)[2] for b in blocks} - {0}
    for key, values in layer_shapes(model).items():
        attr = family.config_keys.get(key)
        if attr and len(set(values)) == 1 and (values[0] > 0 or key == "intermediate_size"):
            if key != "intermediate_size" and family.explicit_head_dim and len(head_dims) == 1:
                config.head_dim = next(iter(head_dims))  # fewer heads, same width
            setattr(config, attr, values[0])
        elif any(v != _config_default(config, key) for v in values):
            structure[key] = values
    added = [f"{i}.{name}" for i, b in enumerate(blocks) for name, m in b.named_modules() if getattr(m, "_prunecli_added_bias", False)]
    if added:
        structure["added_bias"] = added
    if structure:
        setattr(config, STRUCTURE_KEY, structure)
    elif hasattr(config, STRUCTURE_KEY):
        delattr(config, STRUCTURE_KEY)


@torch.no_grad()
def restore_structure(model: nn.Module) -> nn.Module:
    """Reshape a model built from a config with ``prunecli_structure`` to the recorded shapes.

    The weights are placeholders (the first heads / neurons are kept); load the saved state
    dict afterwards. A model without per-layer structure is returned unchanged.
    """
    structure = getattr(model.config, STRUCTURE_KEY, None)
    if not structure:
        return model
    family = family_of(model)
    _, blocks = blocks_of(model)
    for i, block in enumerate(blocks):
        n_q, n_kv, _ = head_counts(family, block)
        want_q = structure.get("num_attention_heads", [n_q] * len(blocks))[i]
        want_kv = structure.get("num_key_value_heads", [n_kv] * len(blocks))[i] if family.gqa else want_q
        if (want_q, want_kv) != (n_q, n_kv):
            unit = heads_as_units(family, block, i, torch.arange(want_q, n_q)[None, :], torch.arange(want_kv, n_kv)[None, :])
            remove_units(block, family, unit, torch.tensor([0]))
        width = ffn_width(family, block)
        want = structure.get("intermediate_size", [width] * len(blocks))[i]
        if want != width:
            remove_units(block, family, ffn_groups(family, block, i), torch.arange(want, width))
    for name in structure.get("added_bias", []):
        index, _, path = name.partition(".")
        layer = blocks[int(index)].get_submodule(path)
        layer.bias = nn.Parameter(torch.zeros(features(layer)[0], dtype=layer.weight.dtype, device=layer.weight.device))
        layer._prunecli_added_bias = True
    return model
