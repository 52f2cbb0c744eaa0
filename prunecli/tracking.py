"""Optional experiment tracking (``logger=``): params and final metrics of each run.

Nothing is required for the default ``logger=none``; ``mlflow`` and ``tensorboard`` are
imported only when chosen, with a one-line install hint when missing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from prunecli.errors import PruneError
from prunecli.registry import Registry

# A tracker takes (logger config, run config, run dir, metrics) and records them.
TRACKERS: Registry[Callable[[Any, DictConfig, Path, dict], None]] = Registry("logger")


def flat_params(cfg: DictConfig) -> dict[str, str]:
    """``{"method.name": "wanda", "sparsity": "0.5", ...}`` for trackers' parameter tables."""
    flat: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def numeric(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# logger name -> the package it needs
PACKAGES = {"mlflow": "mlflow", "tensorboard": "tensorboard"}


def check_available(name: str) -> None:
    """Fail before the run starts when the chosen logger's package is missing."""
    TRACKERS.get(name)
    package = PACKAGES.get(name)
    if package and importlib.util.find_spec(package) is None:
        raise PruneError(f"logger={name} needs {package}, which is not installed: pip install {package}")


@TRACKERS.register("none")
def no_tracking(options: Any, cfg: DictConfig, run_dir: Path, metrics: dict) -> None:
    """The default: the run directory is the record."""


@TRACKERS.register("mlflow")
def mlflow_tracking(options: Any, cfg: DictConfig, run_dir: Path, metrics: dict) -> None:
    check_available("mlflow")
    import mlflow

    mlflow.set_tracking_uri(options.tracking_uri)
    mlflow.set_experiment(options.experiment)
    with mlflow.start_run(run_name=run_dir.name):
        mlflow.log_params(flat_params(cfg))
        mlflow.log_metrics(numeric(metrics))
        mlflow.set_tags({"run_id": metrics.get("run_id"), "status": metrics.get("status"), "run_dir": str(run_dir)})


@TRACKERS.register("tensorboard")
def tensorboard_tracking(options: Any, cfg: DictConfig, run_dir: Path, metrics: dict) -> None:
    check_available("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(Path(options.log_dir) / run_dir.name))
    try:
        writer.add_hparams(flat_params(cfg), numeric(metrics), run_name=".")
    finally:
        writer.close()


def track(cfg: DictConfig, run_dir: Path, metrics: dict) -> None:
    options = cfg.get("logger") or OmegaConf.create({"name": "none"})
    TRACKERS.get(options.name)(options, cfg, run_dir, metrics)
