"""Optional experiment tracking (``logger=``): params and final metrics of each run.

Nothing is required for the default ``logger=none``; ``mlflow`` and ``tensorboard`` are
imported only when chosen, with a one-line install hint when missing.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from prunecli.errors import PruneError
from prunecli.options import Options, parse
from prunecli.registry import Registry


@dataclass(frozen=True)
class LoggerOptions(Options):
    """A tracker's ``logger`` node (``none``: nothing to set)."""


@dataclass(frozen=True)
class MlflowOptions(LoggerOptions):
    tracking_uri: str = "file:outputs/mlruns"
    experiment: str = "prunecli"


@dataclass(frozen=True)
class TensorboardOptions(LoggerOptions):
    log_dir: str = "outputs/tensorboard"  # one sub-folder per run


@dataclass(frozen=True)
class Tracker:
    """``record(options, cfg, run_dir, metrics)``, its typed options and the package it needs (None: none)."""

    name: str
    record: Callable[[Any, DictConfig, Path, dict], None]
    options: type[LoggerOptions] = LoggerOptions
    package: str | None = None


TRACKERS: Registry[Tracker] = Registry("logger")


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


def check_available(name: str) -> None:
    """Fail before the run starts when the chosen logger's package is missing."""
    package = TRACKERS.get(name).package
    if package and importlib.util.find_spec(package) is None:
        raise PruneError(f"logger={name} needs {package}, which is not installed: pip install {package}")


def no_tracking(options: Any, cfg: DictConfig, run_dir: Path, metrics: dict) -> None:
    """The default: the run directory is the record."""


def mlflow_tracking(options: Any, cfg: DictConfig, run_dir: Path, metrics: dict) -> None:
    check_available("mlflow")
    import mlflow

    mlflow.set_tracking_uri(options.tracking_uri)
    mlflow.set_experiment(options.experiment)
    with mlflow.start_run(run_name=run_dir.name):
        mlflow.log_params(flat_params(cfg))
        mlflow.log_metrics(numeric(metrics))
        mlflow.set_tags({"run_id": metrics.get("run_id"), "status": metrics.get("status"), "run_dir": str(run_dir)})


def tensorboard_tracking(options: Any, cfg: DictConfig, run_dir: Path, metrics: dict) -> None:
    check_available("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(Path(options.log_dir) / run_dir.name))
    try:
        writer.add_hparams(flat_params(cfg), numeric(metrics), run_name=".")
    finally:
        writer.close()


TRACKERS.add("none", Tracker("none", no_tracking))
TRACKERS.add("mlflow", Tracker("mlflow", mlflow_tracking, MlflowOptions, "mlflow"))
TRACKERS.add("tensorboard", Tracker("tensorboard", tensorboard_tracking, TensorboardOptions, "tensorboard"))


def parse_logger(node: Any) -> LoggerOptions:
    """The ``logger`` node as its tracker's typed options, its package checked (before the run starts)."""
    options = parse(TRACKERS.get((node or {}).get("name", "none")).options, node or {"name": "none"}, "logger")
    check_available(options.name)
    return options


def track(options: LoggerOptions, cfg: DictConfig, run_dir: Path, metrics: dict) -> None:
    """Record a finished run with the tracker ``options`` name (``cfg``: its parameters)."""
    TRACKERS.get(options.name).record(options, cfg, run_dir, metrics)
