"""Image classifiers: built-in CNNs (:mod:`cnns`; ``small_cnn`` trained on first use, ``resnet_tiny``, ``vgg11``) and torchvision.

* ``small_cnn`` (``source: builtin_cnn``, ``arch: small_cnn``): conv+BN+ReLU blocks, a
  depthwise-separable block, a residual block and a Linear head over a 2x2 pooled map (the
  Linear sees a flatten of 4 features per channel), for 28x28 grayscale Fashion-MNIST. The
  first load trains it for ``model.train_epochs`` (``model.train_steps`` caps the steps) under
  ``model.seed`` and caches the weights as safetensors in the user cache
  (:func:`prunecli.assets.cache_dir`); the file name holds a hash of every setting that changes
  the weights, so later runs load in milliseconds.
* ``resnet_tiny``: a ResNet-18-shaped toy (BasicBlocks with ``out += identity`` and projection
  shortcuts); random init unless ``model.train_epochs`` / ``model.train_steps`` is set.
* ``torchvision``: ``torchvision.models.get_model(model.arch, num_classes=...)`` with weights
  from ``model.checkpoint`` (``torch.load(..., weights_only=True)``, or a ``.safetensors``
  file) else random init; torchvision is optional and imported only here.

A checkpoint saved from a pruned model (``save_model=true``: ``model.safetensors``) holds
smaller tensors than a fresh model; :func:`load_state_resized` shrinks the modules to the saved
shapes first, so ``model.checkpoint=<run>/model/model.safetensors`` reloads a pruned model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from prunecli.assets import cache_dir
from prunecli.errors import PruneError
from prunecli.models import ModelOptions, register_source
from prunecli.models.cnns import ARCHITECTURES

log = logging.getLogger(__name__)

TASK = "image_classifier"


@dataclass(frozen=True)
class ImageModelOptions(ModelOptions):
    """An image classifier's ``model`` node."""

    arch: str = "resnet18"
    input_shape: list[int] = field(default_factory=lambda: [3, 224, 224])  # (channels, height, width) of one image
    num_classes: int = 10
    seed: int = 0  # the random init
    checkpoint: str | None = None  # load these weights (.safetensors or a weights-only torch file)
    dataset: dict = field(default_factory=lambda: {"source": "fashion_mnist", "path": None, "eval_samples": 10000})

    def check(self, prefix: str) -> None:
        super().check(prefix)
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise PruneError(f"{prefix}.input_shape must be [channels, height, width] (got {self.input_shape!r})")
        unknown = sorted(set(self.dataset) - {"source", "path", "eval_samples"})
        if "source" not in self.dataset or unknown:
            raise PruneError(f"{prefix}.dataset takes source, path and eval_samples (got {sorted(self.dataset)})")


@dataclass(frozen=True)
class BuiltinCNNOptions(ImageModelOptions):
    """A built-in CNN (:data:`ARCHITECTURES`), trained once on its dataset if asked and cached."""

    arch: str = "small_cnn"
    widths: list[int] | None = None  # channels per stage (null: the architecture's)
    train_epochs: float = 2  # training recipe on first use: Adam, cosine schedule (0: random init)
    train_steps: int | None = None  # cap on the optimiser steps (null: train_epochs full epochs)
    train_batch_size: int = 128
    train_lr: float = 0.002

    def check(self, prefix: str) -> None:
        super().check(prefix)
        if self.arch not in ARCHITECTURES:
            raise PruneError(f"unknown built-in CNN arch {self.arch!r} (choose from: {', '.join(ARCHITECTURES)})")


def _settings(options: BuiltinCNNOptions) -> dict:
    """What determines the trained weights (hashed into their cache file's name)."""
    return {
        "arch": options.arch, "widths": list(options.widths or ARCHITECTURES[options.arch][1]), "num_classes": options.num_classes,
        "in_channels": options.input_shape[0], "input_shape": list(options.input_shape), "dataset": dict(options.dataset),
        "train_epochs": options.train_epochs, "train_steps": options.train_steps,
        "train_batch_size": options.train_batch_size, "train_lr": float(options.train_lr), "seed": options.seed,
    }


def cached_weights_path(options: BuiltinCNNOptions) -> Path:
    settings = _settings(options)
    settings["dataset"] = {k: v for k, v in settings["dataset"].items() if k in ("source", "path")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / "vision" / f"{settings['arch']}-{digest}.safetensors"


def build_cnn(options: BuiltinCNNOptions) -> nn.Module:
    """The built-in ``options.arch`` with weights drawn under ``options.seed`` (untrained)."""
    settings = _settings(options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings["seed"])
        return ARCHITECTURES[settings["arch"]][0](settings["in_channels"], settings["num_classes"], tuple(settings["widths"]))


def train_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: float, steps: int | None,
                     batch_size: int, lr: float, seed: int) -> dict:
    """Adam with a cosine schedule over shuffled mini-batches (fixed seed); returns the final figures."""
    generator = torch.Generator().manual_seed(seed)
    per_epoch = -(-len(images) // batch_size)
    total = int(steps) if steps is not None else max(1, round(float(epochs) * per_epoch))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    model.train()
    step, start, losses = 0, time.perf_counter(), []
    while step < total:
        order = torch.randperm(len(images), generator=generator)
        for batch in order.split(batch_size):
            if step == total:
                break
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            step += 1
            if step % 100 == 0:
                log.info("train step %d/%d loss %.3f", step, total, sum(losses[-100:]) / len(losses[-100:]))
    model.eval()
    return {"steps": total, "seconds": time.perf_counter() - start, "final_loss": sum(losses[-50:]) / len(losses[-50:])}


def save_safetensors(model: nn.Module, path: Path, metadata: dict | None = None) -> None:
    """The state dict as safetensors, written atomically."""
    from safetensors.torch import save_file

    from prunecli.outputs import replaced_atomically

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with replaced_atomically(path) as temp:
        save_file(state, str(temp), metadata={k: str(v) for k, v in (metadata or {}).items()})


@register_source("builtin_cnn", BuiltinCNNOptions)
def load_builtin_cnn(options: BuiltinCNNOptions):
    """``options.checkpoint`` if given; else trained once (``train_epochs`` > 0 or ``train_steps``) and cached; else random init."""
    from prunecli.data.vision import image_split

    model = build_cnn(options)
    if options.checkpoint:
        load_state_resized(model, read_checkpoint(options.checkpoint))
        return model, None, TASK
    settings = _settings(options)
    if not settings["train_epochs"] and not settings["train_steps"]:
        return model, None, TASK
    path = cached_weights_path(options)
    if not path.exists():
        images, labels = image_split(options.dataset, "train", tuple(options.input_shape))
        log.info("training %s once (%s epochs, seed %d); weights cached in %s", settings["arch"], settings["train_epochs"], settings["seed"], path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings["seed"])
            figures = train_classifier(model, images, labels, settings["train_epochs"], settings["train_steps"],
                                       settings["train_batch_size"], settings["train_lr"], settings["seed"])
        log.info("trained %s: %d steps in %.1f s, final loss %.3f", settings["arch"], figures["steps"], figures["seconds"], figures["final_loss"])
        save_safetensors(model, path, {"settings": json.dumps(settings, sort_keys=True), **figures})
    load_state_resized(model, read_checkpoint(str(path)))
    return model, None, TASK


def read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only=True``; ``state_dict`` / ``model`` keys unwrapped)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise PruneError(f"model.checkpoint={path}: no such file")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as err:
        raise PruneError(f"model.checkpoint={path} cannot be read as a weights-only torch file: {str(err).splitlines()[0]}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise PruneError(f"model.checkpoint={path} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


@torch.no_grad()
def load_state_resized(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state``, first shrinking Conv2d / BatchNorm / Linear / PReLU modules to its shapes (a pruned checkpoint)."""
    for name, module in model.named_modules():
        weight = state.get(f"{name}.weight" if name else "weight")
        if weight is None or not hasattr(module, "weight") or module.weight is None or module.weight.shape == weight.shape:
            continue
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            module.out_channels = weight.shape[0]
            module.in_channels = weight.shape[0] if depthwise else weight.shape[1] * module.groups
            if depthwise:
                module.groups = weight.shape[0]
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = weight.shape
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.num_features = weight.shape[0]
            for buffer in ("running_mean", "running_var"):
                if getattr(module, buffer, None) is not None:
                    setattr(module, buffer, torch.empty(weight.shape[0]))
        elif isinstance(module, nn.PReLU):
            module.num_parameters = weight.shape[0]
        else:
            continue
        module.weight = nn.Parameter(torch.empty_like(weight))
        if getattr(module, "bias", None) is not None:
            module.bias = nn.Parameter(torch.empty(weight.shape[0]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PruneError(f"checkpoint does not fit {type(model).__name__}: missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}")


TORCHVISION_HINT = "pip install 'prunecli[vision]' (a torchvision build matching torch {torch})"


def import_torchvision():
    """``torchvision.models``, or a one-line error with the pip command."""
    try:
        import torchvision.models as models
    except ImportError:
        raise PruneError("model=torchvision needs torchvision, which is not installed: " + TORCHVISION_HINT.format(torch=torch.__version__)) from None
    except Exception as err:  # installed but built for another torch (operator registration fails)
        raise PruneError(f"torchvision cannot be imported ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}): "
                         + TORCHVISION_HINT.format(torch=torch.__version__)) from None
    return models


@register_source("torchvision", ImageModelOptions)
def load_torchvision(options: ImageModelOptions):
    models = import_torchvision()
    arch = options.arch
    available = models.list_models(module=models)
    if arch not in available:
        raise PruneError(f"unknown torchvision classification arch {arch!r} (e.g. {', '.join(a for a in ('mobilenet_v2', 'resnet18', 'vgg11') if a in available)})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        model = models.get_model(arch, weights=None, num_classes=options.num_classes)
    if options.checkpoint:
        load_state_resized(model, read_checkpoint(options.checkpoint))
    else:
        log.warning("model=torchvision arch=%s: no model.checkpoint, random init", arch)
    return model, None, TASK
