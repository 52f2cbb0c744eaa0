"""Offloading (``model.offload``): the weights stay on a storage tier, and each decoder block comes
to the execution device (``model.device``) only while it is used.

* ``none``: the whole model sits on ``model.device`` for the whole run.
* ``cpu``: the model is held in CPU memory; a block (or the embeddings with the final norm and
  head: the *outer* part) is moved to ``model.device`` while it is used, and back after. On a
  CPU-only machine nothing moves (the execution device is the CPU).
* ``disk``: the model is built on the meta device from its config (no weights in memory); a
  part's tensors are read from the checkpoint's safetensors files (``safe_open``) when it is
  used, cast to ``model.dtype``, and dropped after. A block the method changed is written, as it
  is then, to a safetensors file of the offload folder and read from there afterwards; the saved
  model is a sharded safetensors Hugging Face folder (one shard a block) that plain
  ``from_pretrained`` loads.

Who uses which part: the layer-wise pipeline onloads one block at a time (and the outer part
while it embeds the calibration windows); block-wise perplexity does the same over the eval
windows; any other evaluator runs the model with every block onloaded around its own forward
(:meth:`Offload.streamed`). Tied weights (embeddings = head) stay one tensor.
"""

from __future__ import annotations

import json
import math
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from prunecli.environment import release_freed_memory
from prunecli.errors import PruneError
from prunecli.models.layout import blocks_of
from prunecli.outputs import replaced_atomically, write_atomic

MARKER = "PRUNECLI_OFFLOAD"  # an offload folder in use (or left by a killed run): removed when the run ends or starts again
GIB = 1024**3


def outer_modules(model: nn.Module) -> list[nn.Module]:
    """The model's modules outside its block stack that hold tensors (embeddings, rotary, norm, head)."""
    prefix, _ = blocks_of(model)
    kept = []
    for name, module in model.named_modules():
        if name == prefix or name.startswith(prefix + "."):
            continue
        if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
            kept.append(module)
    return kept


class Offload:
    """``offload=none``: everything is already where it runs; onloading does nothing."""

    mode = "none"

    def __init__(self, model: nn.Module, device: torch.device):
        self.model, self.device = model, device

    @contextmanager
    def onloaded(self, modules: list[nn.Module], changed: bool = False) -> Iterator[None]:
        """``modules`` on the execution device for the block's duration; ``changed``: their weights
        were modified (pruned) and must be kept so."""
        yield

    @contextmanager
    def outer(self) -> Iterator[None]:
        """The outer part (embeddings, final norm, head) onloaded."""
        with self.onloaded(outer_modules(self.model) if self.mode != "none" else []):
            yield

    @contextmanager
    def streamed(self) -> Iterator[None]:
        """Any forward of the whole model works: the outer part onloaded, each block onloaded around its own forward."""
        if self.mode == "none":
            yield
            return
        _, blocks = blocks_of(self.model)
        handles, active = [], {}

        def pre(block: nn.Module, args: tuple) -> None:
            active[id(block)] = self.onloaded([block])
            active[id(block)].__enter__()

        def post(block: nn.Module, args: tuple, output: Any) -> None:
            active.pop(id(block)).__exit__(None, None, None)

        for block in blocks:
            handles += [block.register_forward_pre_hook(pre), block.register_forward_hook(post)]
        try:
            with self.outer():
                yield
        finally:
            for handle in handles:
                handle.remove()
            for onloaded in active.values():  # a forward that raised inside a block: drop that block too
                onloaded.__exit__(None, None, None)

    def parts(self) -> Iterator[list[nn.Module]]:
        """Each part of the model in turn, onloaded (the outer part, then every block): for reading all
        weights. ``none``: the whole model, one part (any model, with or without a block stack)."""
        if self.mode == "none":
            yield [self.model]
            return
        with self.outer():
            yield outer_modules(self.model)
        for block in blocks_of(self.model)[1]:
            with self.onloaded([block]):
                yield [block]

    def save(self, folder: Path, tokenizer: Any) -> None:
        """The model as a Hugging Face folder (``save_pretrained``, safetensors) plus the tokenizer."""
        self.model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    def close(self) -> None:
        """Remove what offloading wrote (nothing to remove here)."""


class CpuOffload(Offload):
    """``offload=cpu``: the model in CPU memory, a part on the execution device while used."""

    mode = "cpu"

    def __init__(self, model: nn.Module, device: torch.device):
        super().__init__(model, device)
        blocks_of(model)  # a model without a known block stack cannot be onloaded block by block: refused now

    @contextmanager
    def onloaded(self, modules: list[nn.Module], changed: bool = False) -> Iterator[None]:
        for module in modules:
            module.to(self.device)
        try:
            yield
        finally:
            for module in modules:
                module.to("cpu")


def checkpoint_files(folder: Path) -> dict[str, Path]:
    """``{tensor name: safetensors file}`` of a Hugging Face folder (one file or a sharded index)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return {key: folder / name for key, name in json.loads(index.read_text())["weight_map"].items()}
    single = folder / "model.safetensors"
    if not single.is_file():
        raise PruneError(f"model.offload=disk reads safetensors weights, and {folder} has neither model.safetensors nor its sharded index")
    from safetensors import safe_open

    with safe_open(str(single), framework="pt") as handle:
        return {key: single for key in handle.keys()}


def checkpoint_numel(files: dict[str, Path]) -> int:
    """Elements of every tensor the checkpoint holds (from the safetensors headers; nothing is read)."""
    from safetensors import safe_open

    total = 0
    for path in set(files.values()):
        with safe_open(str(path), framework="pt") as handle:
            total += sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())
    return total


def prepare_folder(folder: Path, needed: int) -> None:
    """Make ``folder`` the offload folder: writable, empty or a leftover of ours (removed), ``needed`` bytes free."""
    folder = folder.expanduser()
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARKER).exists():
            raise PruneError(f"model.offload_folder {str(folder)!r} holds files that are not a prunecli offload folder; choose an empty or new folder")
        shutil.rmtree(folder)  # left by a run that was killed: start clean
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER).write_text("prunecli offload folder of a run in progress (or of a killed one): safe to delete\n")
    except OSError as err:
        raise PruneError(f"cannot write the offload folder {str(folder)!r} (model.offload_folder): {err.strerror or err}") from None
    free = shutil.disk_usage(folder).free
    if free < needed:
        shutil.rmtree(folder, ignore_errors=True)
        raise PruneError(f"model.offload=disk needs {needed / GIB:.2f} GiB free in {folder} for the pruned blocks; "
                         f"{free / GIB:.2f} GiB are free (set model.offload_folder to a larger disk)")


class DiskOffload(Offload):
    """``offload=disk``: a meta-device model whose parts are read from safetensors files when used."""

    mode = "disk"

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype, checkpoint: Path, folder: Path,
                 temporary: list[Path] | None = None):
        super().__init__(model, device)
        blocks_of(model)  # a model without a known block stack cannot be onloaded block by block: refused now
        self.dtype, self.checkpoint, self.folder = dtype, checkpoint, folder
        self.temporary = list(temporary or [])  # removed by close() too (a checkpoint written for this run)
        self.files = checkpoint_files(checkpoint)  # tensor name -> the file holding its current value
        self.keys = stored_names(model, set(self.files))  # parameter name -> the checkpoint's name for it (tied: one)
        self.module_names = {id(module): name for name, module in model.named_modules(remove_duplicate=False)}
        missing = [name for name, _, _ in self.slots(model) if self.key(name) not in self.files]
        if missing:
            raise PruneError(f"model.offload=disk: the checkpoint {checkpoint} has no tensor {missing[0]} of {type(model).__name__} "
                             f"({len(missing)} missing); use model.offload=cpu for it")
        prepare_folder(folder, needed=checkpoint_numel(self.files) * dtype.itemsize + 64 * 1024**2)

    def key(self, name: str) -> str:
        return self.keys.get(name, name)

    def read(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """The current values of ``keys``, on the execution device in the run's dtype (floats only)."""
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for key in keys:
            by_file.setdefault(self.files[key], []).append(key)
        tensors = {}
        for path, wanted in by_file.items():
            with safe_open(str(path), framework="pt") as handle:
                for key in wanted:
                    tensor = handle.get_tensor(key)
                    tensors[key] = tensor.to(device=self.device, dtype=self.dtype if tensor.is_floating_point() else tensor.dtype)
        return tensors

    @contextmanager
    def onloaded(self, modules: list[nn.Module], changed: bool = False) -> Iterator[None]:
        slots = [(name, owner, attr) for module in modules for name, owner, attr in self.slots(module)]
        values = self.read(sorted({self.key(name) for name, _, _ in slots}))
        shared: dict[str, nn.Parameter] = {}
        for name, owner, attr in slots:
            key = self.key(name)
            if attr in owner._parameters:
                owner._parameters[attr] = shared.setdefault(key, nn.Parameter(values[key], requires_grad=False))
            else:
                owner._buffers[attr] = values[key]
        if self.device.type != "cpu":  # non-persistent buffers (rotary frequencies) were built for real: bring them along
            for module in modules:
                module.to(self.device)
        del values
        try:
            yield
            if changed:
                self.write(modules, slots)
        finally:
            emptied: dict[str, nn.Parameter] = {}  # tied parameters stay one (meta) parameter
            for name, owner, attr in slots:
                if attr in owner._parameters:
                    tensor = owner._parameters[attr]
                    owner._parameters[attr] = emptied.setdefault(self.key(name), nn.Parameter(
                        torch.empty(tensor.shape, dtype=tensor.dtype, device="meta"), requires_grad=False))
                else:
                    tensor = owner._buffers[attr]
                    owner._buffers[attr] = torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")
            shared.clear()
            release_freed_memory()

    def slots(self, module: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
        """(full name, owning module, attribute) of every tensor of ``module`` the checkpoint holds."""
        prefix = self.module_names[id(module)]
        for owner_name, owner in module.named_modules(prefix=prefix, remove_duplicate=False):
            for attr, tensor in list(owner._parameters.items()) + list(owner._buffers.items()):
                if tensor is None or (attr in owner._buffers and attr in owner._non_persistent_buffers_set):
                    continue
                yield (f"{owner_name}.{attr}" if owner_name else attr), owner, attr

    def write(self, modules: list[nn.Module], slots: list[tuple[str, nn.Module, str]]) -> None:
        """Store the modules' tensors as they are now in one safetensors file of the offload folder."""
        from safetensors.torch import save_file

        tensors = {}
        for name, owner, attr in slots:
            tensor = owner._parameters[attr] if attr in owner._parameters else owner._buffers[attr]
            tensors.setdefault(self.key(name), tensor.detach().to("cpu").contiguous())
        first = self.module_names[id(modules[0])]
        path = self.folder / "parts" / f"{first}.safetensors"
        with replaced_atomically(path) as temp:
            save_file(tensors, str(temp), metadata={"format": "pt"})
        self.files.update({key: path for key in tensors})

    def save(self, folder: Path, tokenizer: Any) -> None:
        """A sharded safetensors Hugging Face folder: one shard per block, one for the outer part, written
        one part at a time (nothing else in memory), then the index, config and tokenizer."""
        from safetensors.torch import save_file

        _, blocks = blocks_of(self.model)
        groups = [outer_modules(self.model)] + [[block] for block in blocks]
        weight_map, total = {}, 0
        for number, modules in enumerate(groups, start=1):
            shard = f"model-{number:05d}-of-{len(groups):05d}.safetensors"
            keys = sorted({self.key(name) for module in modules for name, _, _ in self.slots(module)} - set(weight_map))
            tensors = {key: value.to("cpu").contiguous() for key, value in self.read(keys).items()}
            save_file(tensors, str(folder / shard), metadata={"format": "pt"})
            total += sum(t.numel() * t.element_size() for t in tensors.values())
            weight_map.update({key: shard for key in tensors})
            del tensors
        write_atomic(folder / "model.safetensors.index.json", json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        self.model.config.dtype = str(self.dtype).split(".")[1]
        self.model.config.save_pretrained(folder)
        if getattr(self.model, "generation_config", None) is not None:
            self.model.generation_config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    def close(self) -> None:
        for path in [self.folder, *self.temporary]:
            shutil.rmtree(path, ignore_errors=True)


def stored_names(model: nn.Module, stored: set[str]) -> dict[str, str]:
    """``{parameter name: the name its tensor is stored under}`` for tied parameters (reachable under
    several names, e.g. embeddings = head): the one name of each group that ``stored`` holds."""
    groups: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(parameter), []).append(name)
    keys = {}
    for names in groups.values():
        if len(names) > 1:
            key = next((name for name in names if name in stored), names[0])
            keys.update({name: key for name in names})
    return keys


def empty_model(folder: Path, task: str, trust_remote_code: bool) -> nn.Module:
    """The model of ``folder``'s config on the meta device (buffers real: rotary frequencies are computed, not stored)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    auto = {"causal_lm": AutoModelForCausalLM, "sequence_classifier": AutoModelForSequenceClassification}.get(task, AutoModel)
    with init_empty_weights(include_buffers=False):
        model = auto.from_config(config, trust_remote_code=trust_remote_code)
    model.tie_weights()  # from_config leaves tied meta parameters separate; the checkpoint stores one of them
    return model.eval()
