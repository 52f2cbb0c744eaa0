"""Image datasets for image classifiers (``model.dataset``): splits as normalised float tensors.

``fashion_mnist`` reads the idx files (``.gz`` or plain) that the Debian package
``dataset-fashion-mnist`` installs in ``/usr/share/datasets/fashion-mnist`` (``apt-get install
dataset-fashion-mnist``; ``model.dataset.path`` points elsewhere). Images are scaled to [0, 1],
normalised with the dataset's mean / std, repeated to the model's channels and resized to its
``input_shape`` when they differ (e.g. 3x224x224 for a torchvision model).

Calibration is a fixed subset of the train split (``data.nsamples`` images drawn under
``data.seed``); evaluation uses the first ``model.dataset.eval_samples`` images of the test split.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from prunecli.errors import AssetMissingError, PruneError
from prunecli.registry import Registry


@dataclass(frozen=True)
class ImageDataset:
    read: Callable[[str | None, str], tuple[np.ndarray, np.ndarray]]  # (path, split) -> uint8 (N, H, W[, C]), int labels
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: int


IMAGE_DATASETS: Registry[ImageDataset] = Registry("image dataset")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An idx file (``.gz`` or not) as a numpy array: 2 zero bytes, dtype code, ndim, big-endian int32 dims, data."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise PruneError(f"{path} is not an idx file")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise PruneError(f"{path}: {data.size} values for dims {dims} (truncated file?)")
    return data.reshape(dims)


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=4)
def read_fashion_mnist(path: str | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    folder = Path(path or FASHION_MNIST_DIR).expanduser()
    images_name, labels_name = FASHION_MNIST_FILES[split]
    images, labels = _find(folder, images_name), _find(folder, labels_name)
    if images is None or labels is None:
        missing = images_name if images is None else labels_name
        raise AssetMissingError(f"Fashion-MNIST is not installed ({folder} has no {missing}[.gz]): "
                                f"apt-get install dataset-fashion-mnist (or set model.dataset.path to a folder with the idx files)")
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise PruneError(f"{folder}: unexpected idx shapes {x.shape} (images) and {y.shape} (labels)")
    return x, y


IMAGE_DATASETS.register("fashion_mnist")(ImageDataset(read_fashion_mnist, (0.2860,), (0.3530,), 10))


def to_model_input(images: np.ndarray, dataset: ImageDataset, input_shape: tuple[int, ...] | None) -> torch.Tensor:
    """uint8 ``(N, H, W)`` or ``(N, H, W, C)`` -> normalised float ``(N, *input_shape)`` (``None``: native shape)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255)
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    mean = torch.tensor(dataset.mean).view(1, -1, 1, 1)
    std = torch.tensor(dataset.std).view(1, -1, 1, 1)
    x = (x - mean) / std
    return x.contiguous() if input_shape is None else fit_to(x, input_shape)


def fit_to(x: torch.Tensor, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Normalised ``(N, C, H, W)`` images repeated to the model's channels and resized to its ``(C, H, W)``."""
    channels, height, width = input_shape
    if x.shape[1] != channels:
        if x.shape[1] != 1:
            raise PruneError(f"cannot turn {x.shape[1]}-channel images into the {channels} channels of model.input_shape")
        x = x.expand(-1, channels, -1, -1)
    if tuple(x.shape[2:]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x.contiguous()


def image_split(dataset_cfg: Any, split: str, input_shape: tuple[int, ...] | None, indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of a split (optionally only ``indices``), fitted to ``input_shape`` (``None``: native)."""
    dataset = IMAGE_DATASETS.get(dataset_cfg["source"])
    images, labels = dataset.read(dataset_cfg.get("path"), split)
    if indices is not None:
        images, labels = images[indices.numpy()], labels[indices.numpy()]
    return to_model_input(images, dataset, input_shape), torch.from_numpy(labels.astype(np.int64))


def calibration_images(dataset_cfg: Any, input_shape: tuple[int, ...], nsamples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed subset of the train split: ``nsamples`` images drawn without replacement under ``seed``."""
    dataset = IMAGE_DATASETS.get(dataset_cfg["source"])
    _, labels = dataset.read(dataset_cfg.get("path"), "train")
    if not 1 <= nsamples <= len(labels):
        raise PruneError(f"data.nsamples={nsamples} calibration images: the train split has {len(labels)}")
    picked = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:nsamples].sort().values
    return image_split(dataset_cfg, "train", tuple(input_shape), picked)


def eval_images(dataset_cfg: Any, input_shape: tuple[int, ...] | None = None, max_count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``max_count`` (else ``dataset_cfg.eval_samples``; ``null``: all) images of the test split.

    ``input_shape=None`` keeps the native size (fit each batch with :func:`fit_to`: a 224x224
    RGB copy of the whole split would take gigabytes).
    """
    dataset = IMAGE_DATASETS.get(dataset_cfg["source"])
    _, labels = dataset.read(dataset_cfg.get("path"), "test")
    count = max_count if max_count is not None else dataset_cfg.get("eval_samples")
    count = len(labels) if count is None else int(count)
    if count < 1:
        raise PruneError(f"eval.accuracy.max_examples / model.dataset.eval_samples must be at least 1 (got {count})")
    return image_split(dataset_cfg, "test", None if input_shape is None else tuple(input_shape), torch.arange(min(count, len(labels))))
