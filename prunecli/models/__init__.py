"""Model loading: one :class:`ModelSource` per ``model.source`` (its loader and typed options),
all returning a :class:`LoadedModel`. The ``model`` node is parsed once (:func:`parse_model`)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn

from prunecli.errors import PruneError
from prunecli.options import Options, node_values, parse
from prunecli.registry import Registry

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A model ready for pruning, with what the pipeline needs to know about it."""

    model: nn.Module
    tokenizer: Any
    name: str
    task: str  # "causal_lm", "encoder", "sequence_classifier" or "image_classifier"
    device: torch.device
    dtype: torch.dtype
    input_shape: tuple[int, ...] | None = None  # one image (C, H, W), for image models (``model.input_shape``)
    offload: Offload | None = None  # where the weights wait while unused (``model.offload``); None: none

    def __post_init__(self) -> None:
        if self.offload is None:
            self.offload = Offload(self.model, self.device)

    def example_input(self, batch_size: int = 1, seqlen: int = 128, seed: int = 0) -> tuple[tuple, dict]:
        """``(args, kwargs)`` for one forward pass: random images, else random tokens (benchmarks, tracing)."""
        generator = torch.Generator().manual_seed(seed)
        if self.input_shape is not None:
            images = torch.randn((batch_size, *self.input_shape), generator=generator)
            return (images.to(device=self.device, dtype=self.dtype),), {}
        vocab = self.model.get_input_embeddings().num_embeddings  # from the shape: meta weights (offload=disk) too
        return (), {"input_ids": torch.randint(0, vocab, (batch_size, seqlen), generator=generator).to(self.device)}

    @property
    def max_length(self) -> int:
        config = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
            if getattr(config, key, None):
                return int(getattr(config, key))
        raise PruneError(f"cannot tell the context length of {type(self.model).__name__}")


@dataclass(frozen=True)
class ModelOptions(Options):
    """What every ``model`` node has: ``name`` (shown and recorded), ``source`` (the loader), where and how it runs."""

    source: str = ""
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def check(self, prefix: str) -> None:
        resolve_device(self.device)


@dataclass(frozen=True)
class TextModelOptions(ModelOptions):
    """A Hugging Face text model's node."""

    trust_remote_code: bool = False  # only set true for code you have read
    offload: Literal["none", "cpu", "disk"] = "none"  # where the weights wait while a block runs (models/offload.py)
    offload_folder: str | None = None  # offload=disk: where pruned blocks are written (null: <run dir>/offload)


# A checkpoint reader: (options, scratch folder) -> (safetensors Hugging Face folder, task), for offload=disk.
Checkpoint = Callable[[Any, Path], tuple[Path, str]]


@dataclass(frozen=True)
class ModelSource:
    """``load(options) -> (model, tokenizer, task)``, the typed options of its ``model`` node and, for
    ``model.offload=disk``, ``checkpoint``: the safetensors folder its weights are read from lazily."""

    name: str
    load: Callable[[Any], tuple[nn.Module, Any, str]]
    options: type[ModelOptions] = TextModelOptions
    checkpoint: Checkpoint | None = None


MODEL_SOURCES: Registry[ModelSource] = Registry("model source")


def register_source(name: str, options: type[ModelOptions] = TextModelOptions, checkpoint: Checkpoint | None = None) -> Callable:
    """Decorator: register ``load`` as the model source ``name`` with typed ``options`` (and its ``checkpoint``)."""
    def add(load: Callable[[Any], tuple[nn.Module, Any, str]]) -> Callable[[Any], tuple[nn.Module, Any, str]]:
        MODEL_SOURCES.add(name, ModelSource(name, load, options, checkpoint))
        return load

    return add


def parse_model(node: Any) -> ModelOptions:
    """The ``model`` node as its source's typed options (every key and value checked)."""
    if isinstance(node, ModelOptions):
        return node
    source = node_values(node, "model").get("source")
    if not source:
        raise PruneError(f"model.source is missing (choose from: {', '.join(MODEL_SOURCES.names())})")
    return parse(MODEL_SOURCES.get(source).options, node, "model")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; asking for cuda without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name))
    except RuntimeError:
        raise PruneError(f"unknown model.device {name!r} (choose from: auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "built without CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise PruneError(f"model.device={name} was asked for but CUDA is not available (torch {torch.__version__}: {build})")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise PruneError(f"unknown model.dtype {name!r} (choose from: {', '.join(DTYPES)})")
    return DTYPES[name]


def load_model(options: ModelOptions, scratch: Path | None = None) -> LoadedModel:
    """Load the model of ``options`` (the parsed ``model`` node) on its device and dtype, in eval mode.

    ``model.offload``: ``none`` puts the model on its device; ``cpu`` keeps it in CPU memory;
    ``disk`` builds it on the meta device and reads each part from the source's safetensors
    checkpoint when used. ``scratch``: the run's folder for the default offload folder (and a
    tiny model's checkpoint); None: a new temporary folder.
    """
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype)
    source = MODEL_SOURCES.get(options.source)
    mode = getattr(options, "offload", "none")
    try:  # a corrupt checkpoint or a bad config is bad input: one line, like a missing path
        if mode == "disk":
            model, tokenizer, task, offload = load_on_disk(source, options, device, dtype, scratch)
        else:
            model, tokenizer, task = source.load(options)
            model = model.to(device=device if mode == "none" else torch.device("cpu"), dtype=dtype).eval()
            offload = CpuOffload(model, device) if mode == "cpu" else None
    except PruneError:
        raise
    except Exception as err:  # whatever the checkpoint's reader raises (safetensors has its own error type)
        reason = (str(err).strip().splitlines() or [""])[0]
        raise PruneError(f"cannot load model {options.name}: {type(err).__name__}: {reason}") from None
    # Whole corpora are tokenised as one text and cut into windows here, never fed whole to
    # the model: silence the tokenizer's "longer than the model maximum" warning.
    if tokenizer is not None:  # image models have none
        tokenizer.model_max_length = int(1e30)
    shape = getattr(options, "input_shape", None)  # image models' options have one
    return LoadedModel(model, tokenizer, options.name, task, device, dtype, tuple(shape) if shape else None, offload)


def load_on_disk(source: ModelSource, options: TextModelOptions, device: torch.device, dtype: torch.dtype,
                 scratch: Path | None) -> tuple[nn.Module, Any, str, DiskOffload]:
    """``offload=disk``: the model on the meta device, its weights read from the source's checkpoint."""
    from transformers import AutoTokenizer

    if source.checkpoint is None:
        raise PruneError(f"model.offload=disk reads a safetensors checkpoint, which model.source={source.name} does not have; use model.offload=cpu")
    temporary = [] if scratch is not None else [Path(tempfile.mkdtemp(prefix="prunecli-offload-"))]
    scratch = Path(scratch) if scratch is not None else temporary[0]
    folder, task = source.checkpoint(options, scratch)
    if folder.resolve().is_relative_to(scratch.resolve()):  # written for this run (a tiny model): removed with the offload folder
        temporary.insert(0, folder)
    try:
        model = empty_model(folder, task, options.trust_remote_code).to(dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=options.trust_remote_code)
        offload_folder = Path(options.offload_folder).expanduser() if options.offload_folder else scratch / "offload"
        return model, tokenizer, task, DiskOffload(model, device, dtype, folder, offload_folder, temporary)
    except BaseException:
        for path in temporary:
            shutil.rmtree(path, ignore_errors=True)
        raise


from prunecli.models.offload import CpuOffload, DiskOffload, Offload, empty_model  # noqa: E402

# Register the loaders.
from prunecli.models import hub, packaged, tiny, vision  # noqa: E402,F401
