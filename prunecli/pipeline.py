"""One run: load -> calibration/eval data -> prune -> evaluate -> benchmark -> write outputs.

:func:`prepare` does everything that can fail because of bad input (config values, missing
assets, model paths, data too short) before any result exists; :func:`execute` then runs
the timed stages and returns the metrics that :mod:`prunecli.outputs` writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from prunecli import console
from prunecli.benchmark import BENCHMARKS
from prunecli.data import calibration_windows, load_documents
from prunecli.environment import environment, peak_memory_mb
from prunecli.errors import PruneError
from prunecli.evaluate import EVALUATORS
from prunecli.methods import METHODS, PruneContext
from prunecli.methods.masks import parse_pattern
from prunecli.methods.targets import select_layers
from prunecli.models import LoadedModel, load_model
from prunecli.sparsity import sparsity_summary

log = logging.getLogger(__name__)


def run_id(cfg: DictConfig) -> str:
    """Stable id: hash of the resolved run config (Hydra's own settings are not part of it)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:12]


def validate(cfg: DictConfig) -> tuple[int, int] | None:
    """Check the values a user types; return the parsed N:M pattern (None = unstructured)."""
    sparsity = cfg.sparsity
    if not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise PruneError(f"sparsity must be a number in [0, 1) (got {sparsity!r})")
    for key in ("seqlen", "nsamples"):
        if not isinstance(cfg.data[key], int) or cfg.data[key] < 1:
            raise PruneError(f"data.{key} must be a positive integer (got {cfg.data[key]!r})")
    METHODS.get(cfg.method.name)
    EVALUATORS.get(cfg.eval.name)
    BENCHMARKS.get(cfg.benchmark.name)
    return parse_pattern(cfg.get("pattern"), float(sparsity))


@dataclass
class Prepared:
    """Everything a run needs, built and checked before the first timed stage."""

    cfg: DictConfig
    loaded: LoadedModel
    layers: dict
    nm: tuple[int, int] | None
    evaluate: Callable[[torch.nn.Module], dict]
    timings: dict = field(default_factory=dict)


@contextmanager
def stage(timings: dict, name: str):
    """Time a stage into ``timings[name]`` (seconds, wall clock, device synchronised)."""
    start = time.perf_counter()
    log.info("stage %s ...", name)
    yield
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    timings[name] = time.perf_counter() - start
    log.info("stage %s done in %.1f s", name, timings[name])


def prepare(cfg: DictConfig) -> Prepared:
    nm = validate(cfg)
    timings: dict = {}
    torch.manual_seed(cfg.seed)
    with stage(timings, "load"):
        loaded = load_model(cfg)
    if cfg.data.seqlen > loaded.max_length:
        raise PruneError(f"data.seqlen={cfg.data.seqlen} is longer than the context of {loaded.name} ({loaded.max_length} tokens)")
    layers = select_layers(loaded.model, cfg.targets, cfg.ignore)
    with stage(timings, "data"):
        evaluate = EVALUATORS.get(cfg.eval.name)(loaded, cfg)
    return Prepared(cfg, loaded, layers, nm, evaluate, timings)


def calibration_loader(cfg: DictConfig, loaded: LoadedModel, timings: dict) -> Callable[[], torch.Tensor]:
    """Build the calibration windows on first use (only data-aware methods pay for them)."""
    cache: list[torch.Tensor] = []

    def windows() -> torch.Tensor:
        if not cache:
            start = time.perf_counter()
            documents = load_documents(cfg.data.calibration)
            cache.append(calibration_windows(loaded.tokenizer, documents, cfg.data.nsamples, cfg.data.seqlen, cfg.data.seed))
            timings["calibration_data"] = time.perf_counter() - start
        return cache[0]

    return windows


def execute(prepared: Prepared, run_dir: Path, overrides: list[str]) -> tuple[dict, list[dict]]:
    """Run the timed stages; return the run record and the per-layer sparsity table."""
    cfg, loaded, timings = prepared.cfg, prepared.loaded, prepared.timings
    metrics: dict[str, Any] = {}
    if cfg.eval.get("baseline", False) and cfg.method.name != "dense":
        with stage(timings, "eval_dense"):
            metrics["ppl_dense"] = prepared.evaluate(loaded.model).get("ppl")
    ctx = PruneContext(
        model=loaded.model, layers=prepared.layers, sparsity=float(cfg.sparsity), nm=prepared.nm,
        options=cfg.method, device=loaded.device, calibration=calibration_loader(cfg, loaded, timings),
    )
    with stage(timings, "prune"):
        METHODS.get(cfg.method.name)(ctx)
    summary, layer_rows = sparsity_summary(loaded.model, prepared.layers)
    with stage(timings, "eval"):
        metrics.update(prepared.evaluate(loaded.model))
    with stage(timings, "benchmark"):
        metrics.update(BENCHMARKS.get(cfg.benchmark.name)(loaded, cfg.benchmark))
    if cfg.save_model:
        with stage(timings, "save"):
            save_model(loaded, run_dir / "model")
    metrics.update(summary)
    metrics.update(ctx.stats)
    metrics.update(
        prune_s=timings["prune"] + timings.get("calibration_data", 0.0),
        eval_s=timings["eval"],
        timings=timings,
        peak_memory_mb=peak_memory_mb(loaded.device),
        environment=environment(loaded.device),
    )
    return base_record(cfg, run_dir, overrides) | metrics | {"status": "completed"}, layer_rows


def base_record(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
    """The identifying fields every run record has, completed or failed."""
    return {
        "run_id": run_id(cfg),
        "status": "failed",
        "model": cfg.model.name,
        "method": cfg.method.name,
        "pattern": cfg.get("pattern") or "unstructured",
        "sparsity_target": cfg.sparsity if cfg.method.get("prunes", True) else 0.0,
        "run_dir": str(run_dir),
        "overrides": list(overrides),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "calibration": {"source": cfg.data.calibration.source, "nsamples": cfg.data.nsamples, "seqlen": cfg.data.seqlen, "seed": cfg.data.seed},
    }


def save_model(loaded: LoadedModel, folder: Path) -> None:
    """``save_pretrained`` (safetensors) plus the tokenizer, loadable with ``model=hf``."""
    loaded.model.save_pretrained(folder, safe_serialization=True)
    loaded.tokenizer.save_pretrained(folder)


def header_rows(cfg: DictConfig) -> list[tuple[str, str]]:
    """The resolved key settings, shown before the run starts."""
    data = cfg.data
    return [
        ("model", f"{cfg.model.name} ({cfg.model.dtype}, device={cfg.model.device})"),
        ("method", f"{cfg.method.name}  sparsity={cfg.sparsity}  pattern={cfg.get('pattern') or 'unstructured'}"),
        ("targets", f"{cfg.targets}  ignore={list(cfg.ignore or [])}"),
        ("calibration", f"{data.calibration.source}  nsamples={data.nsamples} seqlen={data.seqlen} seed={data.seed}"),
        ("eval", f"{cfg.eval.name} on {data.eval.source}  max_eval_tokens={data.max_eval_tokens}"),
        ("benchmark", cfg.benchmark.name),
    ]


def result_table_rows(metrics: dict) -> list[tuple[str, str]]:
    """The key figures for the console summary."""
    keys = ["model", "method", "pattern", "sparsity_target", "sparsity_actual", "sparsity_all_params",
            "params_total", "params_nonzero", "ppl_dense", "ppl", "prefill_ms", "prune_s", "eval_s", "peak_memory_mb"]
    return [(key, console.format_value(metrics[key])) for key in keys if metrics.get(key) is not None]
