"""Apply a filter plan: slice every module that sees the removed channels, or zero them.

Removal works module by module from the :class:`~prunecli.structured.cnn.graph.ChannelGraph`:
a dense conv keeps the rows of its kept output channels and the columns of its kept inputs; a
depthwise conv, BatchNorm or PReLU keeps its kept channels (``groups`` follows); a Linear keeps
the input features of its kept channels (``factor`` features each after a flatten). Modules
are changed in place (same objects, new parameters and attributes), so names stay valid.

:func:`mask_filters` is the masked twin: the same channels zeroed (filter rows and biases,
BatchNorm gamma and beta, depthwise filters, and the consumers' input columns), shapes unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from prunecli.structured.cnn.graph import ChannelGraph


def kept_channels(graph: ChannelGraph, removed: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Root space -> the channels it keeps (sorted), for every space that loses some."""
    kept = {}
    for root, gone in removed.items():
        keep = torch.ones(graph.spaces.size[root], dtype=torch.bool)
        keep[gone.long()] = False
        kept[root] = keep.nonzero().reshape(-1)
    return kept


def _parameter(old: nn.Parameter, value: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(value.contiguous().clone(), requires_grad=old.requires_grad)


@torch.no_grad()
def remove_filters(model: nn.Module, graph: ChannelGraph, removed: dict[int, torch.Tensor]) -> None:
    """Physically remove ``removed[root]`` channels of each space from ``model`` (traced as ``graph``)."""
    kept = kept_channels(graph, {root: index for root, index in removed.items() if len(index)})
    if not kept:
        return
    for name, use in graph.uses.items():
        module = model.get_submodule(name)
        if use.kind == "conv":
            rows = kept.get(graph.spaces.find(use.out_space))
            columns = graph.indices(use.in_layout, kept)
            full_rows, full_columns = rows is None, len(columns) == module.in_channels
            if full_rows and full_columns:
                continue
            rows = torch.arange(module.out_channels) if rows is None else rows
            module.weight = _parameter(module.weight, module.weight.data[rows][:, columns])
            if module.bias is not None:
                module.bias = _parameter(module.bias, module.bias.data[rows])
            module.out_channels, module.in_channels = len(rows), len(columns)
        elif use.kind == "linear":
            columns = graph.indices(use.in_layout, kept)
            if len(columns) == module.in_features:
                continue
            module.weight = _parameter(module.weight, module.weight.data[:, columns])
            module.in_features = len(columns)
        else:  # depthwise conv, BatchNorm, PReLU: one entry per channel
            channels = graph.indices(use.in_layout, kept)
            if len(channels) == graph.layout_size(use.in_layout):
                continue
            _slice_channels(module, use.kind, channels)


def _slice_channels(module: nn.Module, kind: str, channels: torch.Tensor) -> None:
    n = len(channels)
    module.weight = _parameter(module.weight, module.weight.data[channels]) if module.weight is not None else None
    if kind == "depthwise":
        if module.bias is not None:
            module.bias = _parameter(module.bias, module.bias.data[channels])
        module.in_channels = module.out_channels = module.groups = n
    elif kind == "norm":
        if module.bias is not None:
            module.bias = _parameter(module.bias, module.bias.data[channels])
        for buffer in ("running_mean", "running_var"):
            if getattr(module, buffer, None) is not None:
                setattr(module, buffer, getattr(module, buffer)[channels].clone())
        module.num_features = n
    elif kind == "prelu":
        module.num_parameters = n


@torch.no_grad()
def mask_filters(model: nn.Module, graph: ChannelGraph, removed: dict[int, torch.Tensor]) -> None:
    """Zero what :func:`remove_filters` would remove; shapes unchanged."""
    gone: dict[int, torch.Tensor] = {root: index.long() for root, index in removed.items() if len(index)}
    if not gone:
        return
    for name, use in graph.uses.items():
        module = model.get_submodule(name)
        # features of the input layout that belong to removed channels
        dropped = _dropped(graph, use.in_layout, gone)
        if use.kind == "conv":
            rows = gone.get(graph.spaces.find(use.out_space))
            if rows is not None:
                module.weight[rows] = 0
                if module.bias is not None:
                    module.bias[rows] = 0
            module.weight[:, dropped] = 0
        elif use.kind == "linear":
            module.weight[:, dropped] = 0
        elif len(dropped):
            if module.weight is not None:
                module.weight[dropped] = 0
            if getattr(module, "bias", None) is not None:
                module.bias[dropped] = 0


def _dropped(graph: ChannelGraph, layout, gone: dict[int, torch.Tensor]) -> torch.Tensor:
    parts, start = [], 0
    for s, f in layout or ():
        root, size = graph.spaces.find(s), graph.spaces.size[s]
        if root in gone:
            parts.append(start + (gone[root][:, None] * f + torch.arange(f)).reshape(-1))
        start += size * f
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
