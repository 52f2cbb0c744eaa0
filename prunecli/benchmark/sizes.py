"""Bytes: a model in memory, and its weights on disk dense vs sparse-compressed (safetensors).

Formats for :func:`save_compressed` (a float matrix is encoded where that makes it smaller,
the others are stored as they are; :func:`load_compressed` restores the dense state dict exactly):

* ``dense``: plain safetensors;
* ``csr``: ``name.__crow`` / ``name.__col`` (int32) and ``name.__values`` of the ``(rows, -1)``
  view, plus ``name.__shape`` — worth it above ~50% sparsity in fp32 (an index per value);
* ``bitmask``: ``name.__mask`` (one bit per weight, packed into uint8) and ``name.__values``
  (the nonzeros in row-major order) — ``1/32`` of the dense size plus the nonzeros.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from prunecli.registry import Registry

SUFFIX = "__"  # marks the encoded parts of a tensor in a compressed file


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Storage of a dense or sparse (CSR / BSR / COO / 2:4) tensor: values plus indices."""
    if tensor.layout in (torch.sparse_csr, torch.sparse_bsr):
        parts = (tensor.crow_indices(), tensor.col_indices(), tensor.values())
    elif tensor.layout == torch.sparse_coo:
        parts = (tensor._indices(), tensor._values())
    elif hasattr(tensor, "packed"):  # SparseSemiStructuredTensor: packed values + metadata
        parts = tuple(t for t in (tensor.packed, tensor.meta) if t is not None)
    else:
        parts = (tensor,)
    return sum(part.numel() * part.element_size() for part in parts)


def model_bytes(model: nn.Module) -> int:
    """Parameters and buffers (shared tensors once)."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor_bytes(tensor)
    return total


def encoded_bytes(tensor: torch.Tensor, fmt: str) -> int:
    """Bytes ``fmt`` would store for ``tensor`` (int32 indices, packed bits)."""
    nonzeros = int(torch.count_nonzero(tensor))
    values = nonzeros * tensor.element_size()
    if fmt == "csr":
        return values + 4 * nonzeros + 4 * (tensor.shape[0] + 1)
    return values + (tensor.numel() + 7) // 8


def worth_encoding(tensor: torch.Tensor, fmt: str) -> bool:
    """Encode a float matrix only where it gets smaller (CSR from ~50% zeros in fp32, a bitmask from ~3%)."""
    return tensor.is_floating_point() and tensor.dim() >= 2 and encoded_bytes(tensor, fmt) < tensor.numel() * tensor.element_size()


# An encoder maps (name, tensor) to the tensors stored for it; its decoder maps the parts back.
ENCODERS: Registry[Callable[[str, torch.Tensor], dict[str, torch.Tensor]]] = Registry("compressed format")
DECODERS: dict[str, Callable[[dict[str, torch.Tensor]], torch.Tensor]] = {}


@ENCODERS.register("csr")
def encode_csr(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    matrix = tensor.reshape(tensor.shape[0], -1).to_sparse_csr()
    return {f"{name}.{SUFFIX}crow": matrix.crow_indices().to(torch.int32), f"{name}.{SUFFIX}col": matrix.col_indices().to(torch.int32),
            f"{name}.{SUFFIX}values": matrix.values(), f"{name}.{SUFFIX}shape": torch.tensor(tensor.shape, dtype=torch.int64)}


def decode_csr(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    shape = tuple(parts["shape"].tolist())
    rows = shape[0]
    matrix = torch.sparse_csr_tensor(parts["crow"].long(), parts["col"].long(), parts["values"], (rows, int(torch.tensor(shape[1:]).prod())),
                                     check_invariants=True)
    return matrix.to_dense().reshape(shape)


@ENCODERS.register("bitmask")
def encode_bitmask(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    flat = tensor.reshape(-1)
    mask = flat != 0
    padded = torch.nn.functional.pad(mask.to(torch.uint8), (0, (-mask.numel()) % 8)).reshape(-1, 8)
    packed = (padded << torch.arange(7, -1, -1, dtype=torch.uint8)).sum(dim=1, dtype=torch.uint8)
    return {f"{name}.{SUFFIX}mask": packed, f"{name}.{SUFFIX}values": flat[mask],
            f"{name}.{SUFFIX}shape": torch.tensor(tensor.shape, dtype=torch.int64)}


def decode_bitmask(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    shape = tuple(parts["shape"].tolist())
    count = int(torch.tensor(shape).prod())
    bits = (parts["mask"][:, None] >> torch.arange(7, -1, -1, dtype=torch.uint8)) & 1
    mask = bits.reshape(-1)[:count].bool()
    flat = torch.zeros(count, dtype=parts["values"].dtype)
    flat[mask] = parts["values"]
    return flat.reshape(shape)


DECODERS.update(csr=decode_csr, bitmask=decode_bitmask)


def save_compressed(state: dict[str, torch.Tensor], path: Path, fmt: str) -> int:
    """Write ``state`` to ``path`` in ``fmt`` (dense | csr | bitmask); return the file's size in bytes."""
    encode = None if fmt == "dense" else ENCODERS.get(fmt)
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        tensors.update(encode(name, tensor) if encode and worth_encoding(tensor, fmt) else {name: tensor})
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(path), metadata={"prunecli_format": fmt})
    return path.stat().st_size


def load_compressed(path: Path) -> dict[str, torch.Tensor]:
    """The dense state dict of a file written by :func:`save_compressed` (any format)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        fmt = (handle.metadata() or {}).get("prunecli_format", "dense")
    stored = load_file(str(path))
    if fmt == "dense":
        return stored
    state: dict[str, torch.Tensor] = {}
    encoded: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in stored.items():
        name, marker, part = key.rpartition(f".{SUFFIX}")
        if marker:
            encoded.setdefault(name, {})[part] = tensor
        else:
            state[key] = tensor
    for name, parts in encoded.items():
        state[name] = DECODERS[fmt](parts)
    return state


def disk_bytes(model: nn.Module, folder: Path, formats: list[str]) -> dict[str, int]:
    """Size of the model's state dict saved in each format (files written to ``folder``)."""
    state = model.state_dict()
    unique: dict[str, torch.Tensor] = {}
    pointers = set()
    for name, tensor in state.items():  # tied weights are stored once, as save_pretrained does
        if tensor.data_ptr() not in pointers:
            pointers.add(tensor.data_ptr())
            unique[name] = tensor
    folder.mkdir(parents=True, exist_ok=True)
    return {fmt: save_compressed(unique, folder / f"weights.{fmt}.safetensors", fmt) for fmt in formats}
