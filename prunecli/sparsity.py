"""Sparsity counted from actual zeros, never from the requested ratio."""

from __future__ import annotations

from torch import nn

from prunecli.methods.targets import weight_matrix


def layer_table(layers: dict[str, nn.Module]) -> list[dict]:
    """One row per pruned layer: name, shape ``(out, in)``, numel, zeros, sparsity."""
    rows = []
    for name, module in layers.items():
        weight = weight_matrix(module)
        zeros = int((weight == 0).sum())
        rows.append({
            "name": name,
            "shape": "x".join(str(d) for d in weight.shape),
            "numel": weight.numel(),
            "zeros": zeros,
            "sparsity": zeros / weight.numel(),
        })
    return rows


def model_counts(model: nn.Module) -> tuple[int, int]:
    """(total, nonzero) over all unique parameter tensors (tied weights counted once)."""
    total = nonzero = 0
    for parameter in model.parameters():  # .parameters() already de-duplicates tied tensors
        total += parameter.numel()
        nonzero += int(parameter.count_nonzero())
    return total, nonzero


def sparsity_summary(model: nn.Module, layers: dict[str, nn.Module]) -> tuple[dict, list[dict]]:
    """Summary figures for metrics/results plus the per-layer table."""
    table = layer_table(layers)
    numel = sum(row["numel"] for row in table)
    zeros = sum(row["zeros"] for row in table)
    total, nonzero = model_counts(model)
    summary = {
        "sparsity_actual": zeros / numel,
        "sparsity_all_params": 1 - nonzero / total,
        "params_total": total,
        "params_nonzero": nonzero,
        "params_pruned_layers": numel,
    }
    return summary, table
