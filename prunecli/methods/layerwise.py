"""The layer-wise calibration pipeline shared by every data-aware method (as in the SparseGPT
and Wanda papers' code).

1. Embed the calibration windows and catch the inputs of block 0 (:func:`block_inputs`).
2. For each block in turn: hook its target layers to accumulate input statistics while the
   block runs on its inputs; let the method prune the block from those statistics; run the
   block again with the *pruned* weights; its outputs are the next block's inputs. The walk
   ends at the last block with target layers: its outputs, and the blocks after it, feed
   nothing that is pruned (the reference code re-runs them all the same).

Only one block's activations live at a time. Windows go through a block in batches of
``batch_size`` (the reference code feeds one window at a time; batching gives the same
statistics, faster), and the C heap keeps the memory they free for the next batch
(:func:`~prunecli.environment.reuse_freed_memory`; not when offloading). With ``model.offload``
(``ctx.offload``), only the embeddings (step 1) or the one block being calibrated and pruned
(step 2) are on the execution device. On CPU, during the passes, the blocks' causal attention runs a
chunk of queries at a time (:mod:`prunecli.models.attention`) and their linear layers multiply by
oneDNN, from copies of the block's weights packed at the start of each pass (:mod:`prunecli.models.linear`).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from prunecli.environment import prefault_for_writing, reuse_freed_memory
from prunecli.errors import PruneError
from prunecli.methods.floor import counting, matmul_shapes
from prunecli.methods.statistics import Accumulator, InputsCollected, collect_inputs
from prunecli.models.attention import calibration_attention
from prunecli.models.layout import blocks_of
from prunecli.models.linear import calibration_linear

log = logging.getLogger(__name__)


class _Caught(Exception):
    """Raised by the hook on block 0 once its inputs are recorded: the rest of the model is skipped."""


@dataclass
class BlockBatch:
    """One batch of a block's inputs: hidden states plus the other call arguments (masks, rotary)."""

    hidden: torch.Tensor
    args: tuple
    kwargs: dict

    def run(self, block: nn.Module) -> torch.Tensor:
        output = block(self.hidden, *self.args, **self.kwargs)
        return output[0] if isinstance(output, tuple) else output


@torch.inference_mode()
def block_inputs(model: nn.Module, block: nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device) -> list[BlockBatch]:
    """Run the model on ``windows`` up to ``block`` and return what ``block`` was called with."""
    caught: list[BlockBatch] = []

    def catch(module: nn.Module, args: tuple, kwargs: dict):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        caught.append(BlockBatch(hidden, tuple(args[1:]), dict(kwargs)))
        raise _Caught

    handle = block.register_forward_pre_hook(catch, with_kwargs=True)
    extra = {"use_cache": False} if hasattr(model.config, "use_cache") else {}
    try:
        for batch in torch.split(windows, batch_size):
            try:
                model(input_ids=batch.to(device), **extra)
            except _Caught:
                pass
    finally:
        handle.remove()
    return caught


def layers_by_block(layers: dict[str, nn.Module], prefix: str, nblocks: int) -> list[dict[str, nn.Module]]:
    """Split ``layers`` by the block they live in; layers outside every block are an error."""
    grouped: list[dict[str, nn.Module]] = [{} for _ in range(nblocks)]
    for name, module in layers.items():
        index = name[len(prefix) + 1 :].split(".", 1)[0] if name.startswith(prefix + ".") else ""
        if not index.isdigit():
            raise PruneError(f"layer {name} is outside the transformer blocks ({prefix}.N); layer-wise methods prune only inside them (add it to ignore)")
        grouped[int(index)][name] = module
    return grouped


# A block pruner gets (block index, {layer name: module}, {layer name: statistics}).
BlockPruner = Callable[[int, dict[str, nn.Module], dict[str, Accumulator]], None]


def run_until_inputs_collected(batch: BlockBatch, block: nn.Module) -> None:
    try:
        batch.run(block)
    except InputsCollected:
        pass


@torch.inference_mode()
def prune_layerwise(ctx: Any, make_stats: Callable[[int, torch.device], Accumulator], prune_block: BlockPruner,
                    desc: str, batch_size: int, measure_only: bool = False,
                    before_block: Callable[[int, dict[str, nn.Module]], None] | None = None) -> None:
    """Walk the blocks of ``ctx.model``, pruning ``ctx.layers`` block by block (see module doc).

    ``measure_only``: ``prune_block`` only reads statistics (OWL's dense pass), so the
    statistics pass's outputs feed the next block directly. Otherwise the statistics pass
    stops as soon as every layer has its input, and the block is run again once pruned.
    ``batch_size``: calibration windows per forward through a block. ``before_block(index,
    layers)``: called before a block's statistics pass (the update stage puts its dense weights back).
    """
    model, device = ctx.model, ctx.device
    prefix, blocks = blocks_of(model)
    grouped = layers_by_block(ctx.layers, prefix, len(blocks))
    windows = ctx.calibration
    if windows is None:
        raise PruneError(f"{desc} needs calibration data (its method descriptor must say calibration=True)")
    start = time.perf_counter()
    with ctx.offload.outer():
        batches = block_inputs(model, blocks[0], windows, batch_size, device)
    total, first = int(windows.shape[0]), min(batch_size, int(windows.shape[0]))  # windows: all, the first batch's
    block_times = []
    # the FLOPs of the first pruned block are counted (methods/floor.py): its passes on their first batch
    # (a pass's FLOPs are linear in its windows: scaled by all windows / the first batch's) and its pruning
    counted = next((i for i, layers in enumerate(grouped) if layers), None)
    last = max((i for i, layers in enumerate(grouped) if layers), default=-1)
    flops = {"calibrate": 0, "prune": 0, "rerun": 0}
    seconds = dict.fromkeys(flops, 0.0)  # wall seconds of each stage, over all blocks

    @contextmanager
    def stage(key: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            seconds[key] += time.perf_counter() - began

    def run_all(index: int, key: str, run: Callable[[BlockBatch], Any]) -> list:
        outputs = []
        with stage(key), calibration_linear(blocks[index], device):  # the block's weights packed for this pass
            for number, batch in enumerate(batches):
                with counting(index == counted and number == 0, flops, key):
                    outputs.append(run(batch))
        return outputs

    # the passes free and allocate the same activations block after block: keep the freed memory for
    # them (offloading keeps the resident set small instead)
    with reuse_freed_memory() if ctx.offload.mode == "none" else nullcontext(), calibration_attention(model, device):
        for index, block in enumerate(tqdm(blocks[: last + 1], desc=desc, unit="block")):
            began = time.perf_counter()
            outputs = None
            with ctx.offload.onloaded([block], changed=bool(grouped[index]) and not measure_only):
                if grouped[index]:
                    if not measure_only:  # their weights will be written in place: made writable before the first
                        with stage("prune"):  # pass reads them (environment.prefault_for_writing)
                            prefault_for_writing(p for layer in grouped[index].values() for p in layer.parameters(recurse=False))
                    if before_block is not None:
                        before_block(index, grouped[index])
                    with collect_inputs(grouped[index], make_stats, stop_when_done=not measure_only) as stats:
                        if measure_only:
                            outputs = run_all(index, "calibrate", lambda batch: batch.run(block))
                        else:
                            run_all(index, "calibrate", lambda batch: run_until_inputs_collected(batch, block))
                    with stage("prune"), counting(index == counted, flops, "prune"):
                        prune_block(index, grouped[index], stats)
                if outputs is None and index < last:
                    outputs = run_all(index, "rerun", lambda batch: batch.run(block))
            for batch, output in zip(batches, outputs or []):
                batch.hidden = output
            block_times.append(time.perf_counter() - began)
    pruned_blocks = sum(1 for layers in grouped if layers)
    ctx.stats.setdefault("calibration", {})[desc] = {
        "windows": total, "tokens": int(windows.numel()), "batch_size": batch_size,
        "seconds": time.perf_counter() - start, "block_seconds": [round(t, 3) for t in block_times],
        # where they went: the statistics passes, the method's own work, the re-runs (the rest: catching block 0's
        # inputs, moving offloaded blocks, the update stage's before_block)
        "stage_seconds": {key: round(value, 3) for key, value in seconds.items()},
        # matmul FLOPs of the block passes (the counted block's, times the blocks that ran them), and their shapes
        "flops": (flops["calibrate"] * total // first + flops["prune"]) * pruned_blocks + flops["rerun"] * total // first * max(last, 0),
        "shapes": sorted(matmul_shapes(grouped[counted], first * int(windows.shape[1])))
                  if counted is not None else [],
    }


def onloaded_layers(ctx: Any) -> Iterator[dict[str, nn.Module]]:
    """``ctx.layers`` in groups whose weights are on the execution device, for a data-free method:
    all at once without offloading, else one block's layers at a time (the block kept as changed)."""
    if ctx.offload.mode == "none":
        yield ctx.layers
        return
    prefix, blocks = blocks_of(ctx.model)
    for block, layers in zip(blocks, layers_by_block(ctx.layers, prefix, len(blocks))):
        if layers:
            with ctx.offload.onloaded([block], changed=True):
                yield layers
