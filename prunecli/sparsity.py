"""Sparsity counted from actual zeros, never from the requested ratio."""

from __future__ import annotations

from typing import Iterable

from torch import nn

from prunecli.methods.targets import weight_matrix


def shape_text(module: nn.Module) -> str:
    """The layer's weight shape ``(out, in)`` as ``576x1536``."""
    return "x".join(str(d) for d in weight_matrix(module).shape)


def layer_shapes(layers: dict[str, nn.Module]) -> dict[str, str]:
    """``{name: shape text}`` (of an offloaded model too: meta tensors have shapes)."""
    return {name: shape_text(module) for name, module in layers.items()}


def layer_table(layers: dict[str, nn.Module]) -> list[dict]:
    """One row per pruned layer: name, shape ``(out, in)``, numel, zeros, sparsity."""
    rows = []
    for name, module in layers.items():
        weight = weight_matrix(module)
        zeros = int((weight == 0).sum())
        rows.append({
            "name": name,
            "shape": shape_text(module),
            "numel": weight.numel(),
            "zeros": zeros,
            "sparsity": zeros / weight.numel(),
        })
    return rows


def model_counts(modules: nn.Module | list[nn.Module]) -> tuple[int, int]:
    """(total, nonzero) over all unique parameter tensors of ``modules`` (tied weights counted once)."""
    seen, total, nonzero = set(), 0, 0
    for module in modules if isinstance(modules, list) else [modules]:
        for parameter in module.parameters():
            if id(parameter) not in seen:
                seen.add(id(parameter))
                total += parameter.numel()
                nonzero += int(parameter.count_nonzero())
    return total, nonzero


def sparsity_summary(model: nn.Module, layers: dict[str, nn.Module], parts: Iterable[list[nn.Module]] | None = None) -> tuple[dict, list[dict]]:
    """Summary figures for metrics/results plus the per-layer table. ``parts``: the model's parts in
    turn, each with its weights present (an offloaded model's :meth:`~prunecli.models.offload.Offload.parts`);
    None: the model as it is."""
    rows: dict[str, dict] = {}
    total = nonzero = 0
    for modules in parts if parts is not None else [[model]]:
        inside = {id(sub) for module in modules for sub in module.modules()}
        rows.update({row["name"]: row for row in layer_table({name: m for name, m in layers.items() if id(m) in inside and name not in rows})})
        part_total, part_nonzero = model_counts(modules)  # tied tensors live in one part (embeddings = head)
        total, nonzero = total + part_total, nonzero + part_nonzero
    table = [rows[name] for name in layers]
    numel = sum(row["numel"] for row in table)
    zeros = sum(row["zeros"] for row in table)
    summary = {
        "sparsity_actual": zeros / numel,
        "sparsity_all_params": 1 - nonzero / total,
        "params_total": total,
        "params_nonzero": nonzero,
        "params_pruned_layers": numel,
    }
    return summary, table
