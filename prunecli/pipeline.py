"""One run: load -> calibration/eval data -> prune -> evaluate -> benchmark -> write outputs.

:func:`prepare` does everything that can fail because of bad input (config values, missing
assets, model paths, data too short) before any result exists; :func:`execute` then runs
the timed stages and returns the metrics that :mod:`prunecli.outputs` writes.
"""

from __future__ import annotations

import copy
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

from prunecli import benchmark, console, finetune, schedules
from prunecli import evaluate as evaluation
from prunecli.benchmark import BENCHMARKS, BenchmarkContext
from prunecli.data import calibration_windows, load_documents
from prunecli.environment import environment, peak_memory_mb
from prunecli.errors import PruneError, RunFailedError, require_int
from prunecli.evaluate import zeroshot
from prunecli.interrupts import Interrupted
from prunecli.methods import METHODS, Method, MethodOptions, PruneContext
from prunecli.methods.allocation import ALLOCATIONS
from prunecli.methods.masks import check_nm_fits, parse_pattern
from prunecli.methods.targets import select_layers, weight_matrix
from prunecli.models import LoadedModel, load_model, resolve_device, resolve_dtype
from prunecli.outputs import write_csv
from prunecli.sparsity import sparsity_summary
from prunecli.tracking import check_available as check_tracker

log = logging.getLogger(__name__)


# The unpruned model's scores kept beside the pruned model's, as <key>_dense.
BASELINE_KEYS = ("ppl", "accuracy", "zeroshot", "zeroshot_mean", "zeroshot_mean_norm")
# Keys that say how to run, not what to compute: not part of the run id.
BOOKKEEPING_KEYS = ("resume", "resume_root", "save_model", "logger")
# Groups whose default changes nothing: left out of the run id, so ids from before they existed still match.
NEUTRAL_DEFAULTS = {"finetune": {"name": "none"}, "schedule": {"name": "oneshot"}}


def run_id(cfg: DictConfig) -> str:
    """Stable id: hash of the resolved run config (Hydra's own settings and bookkeeping excluded)."""
    resolved = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items()
                if k not in BOOKKEEPING_KEYS and NEUTRAL_DEFAULTS.get(k, ()) != v}
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:12]


def validate(cfg: DictConfig) -> tuple[tuple[int, int] | None, MethodOptions]:
    """Check the values a user types; return the parsed N:M pattern (None = unstructured) and the method's typed options."""
    sparsity = cfg.sparsity
    if not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise PruneError(f"sparsity must be a number in [0, 1) (got {sparsity!r})")
    for key in ("seqlen", "nsamples"):
        if not isinstance(cfg.data[key], int) or cfg.data[key] < 1:
            raise PruneError(f"data.{key} must be a positive integer (got {cfg.data[key]!r})")
    require_int(cfg.data.get("max_eval_tokens"), "data.max_eval_tokens", null="for the whole text")
    resolve_device(cfg.model.device)
    resolve_dtype(cfg.model.dtype)
    options = METHODS.get(cfg.method.name).parse(cfg.method)
    ALLOCATIONS.get(cfg.allocation)
    benchmark.check_settings(cfg.benchmark)
    check_tracker(cfg.logger.name)
    nm = parse_pattern(cfg.get("pattern"), float(sparsity))
    if nm is not None and cfg.allocation != "uniform":
        raise PruneError(f"allocation={cfg.allocation} gives blocks different sparsities, which an N:M pattern cannot; use allocation=uniform")
    finetune.validate(cfg)  # fine-tune and schedule settings
    return nm, options


@dataclass
class Prepared:
    """Everything a run needs, built and checked before the first timed stage."""

    cfg: DictConfig
    method: Method
    options: MethodOptions  # the method's, typed
    loaded: LoadedModel
    layers: dict
    nm: tuple[int, int] | None
    evaluate: Callable[[torch.nn.Module], dict]
    calibration: torch.Tensor | None  # (nsamples, seqlen) windows, for data-aware methods only
    timings: dict = field(default_factory=dict)
    finetune: finetune.FineTune | None = None  # checked training data and settings (finetune != none)


@contextmanager
def stage(timings: dict, name: str):
    """Time a stage into ``timings[name]`` (seconds, wall clock, device synchronised)."""
    start = time.perf_counter()
    log.info("stage %s ...", name)
    try:
        yield
    except Interrupted as stop:  # the innermost stage names where the run was stopped
        stop.stage = stop.stage or name
        raise
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    timings[name] = time.perf_counter() - start
    log.info("stage %s done in %.1f s", name, timings[name])


def prepare(cfg: DictConfig) -> Prepared:
    nm, options = validate(cfg)
    method = METHODS.get(cfg.method.name)
    timings: dict = {}
    torch.manual_seed(cfg.seed)
    with stage(timings, "load"):
        loaded = load_model(cfg)
    if loaded.tokenizer is not None and cfg.data.seqlen > loaded.max_length:  # text models only
        raise PruneError(f"data.seqlen={cfg.data.seqlen} is longer than the context of {loaded.name} ({loaded.max_length} tokens)")
    benchmark.check_fits(loaded, cfg.benchmark)
    if method.check_model is not None:  # e.g. a GQA ratio the shapes cannot honour
        method.check_model(options, float(cfg.sparsity), loaded.model)
    layers = select_layers(loaded.model, cfg.targets, cfg.ignore)
    if nm is not None:
        for name, module in layers.items():
            check_nm_fits(weight_matrix(module).shape[1], nm, name)
    with stage(timings, "data"):
        evaluate = evaluation.build(loaded, cfg)
    windows = None
    if needs_calibration(cfg, method, options):
        with stage(timings, "calibration_data"):
            if loaded.input_shape is not None:  # image model: (images, labels), a fixed subset of its dataset's train split
                from prunecli.data.vision import calibration_images

                windows = calibration_images(cfg.model.dataset, loaded.input_shape, cfg.data.nsamples, cfg.data.seed)
            else:
                documents = load_documents(cfg.data.calibration)
                windows = calibration_windows(loaded.tokenizer, documents, cfg.data.nsamples, cfg.data.seqlen, cfg.data.seed)
    plan = None
    if finetune.kind_of(cfg) != "none":
        with stage(timings, "finetune_data"):
            plan = finetune.plan(loaded, cfg, windows)
    return Prepared(cfg, method, options, loaded, layers, nm, evaluate, windows, timings, plan)


def needs_calibration(cfg: DictConfig, method: Method, options: MethodOptions) -> bool:
    """Data-aware methods (the descriptor says, from the options) and the OWL allocation use calibration windows."""
    return method.needs_calibration(options) or (method.prunes and cfg.allocation == "owl")


def execute(prepared: Prepared, run_dir: Path, overrides: list[str]) -> tuple[dict, list[dict]]:
    """Run the timed stages; return the run record and the per-layer sparsity table."""
    cfg, method, loaded, timings = prepared.cfg, prepared.method, prepared.loaded, prepared.timings
    metrics: dict[str, Any] = {}
    if cfg.eval.get("baseline", False) and method.prunes:
        with stage(timings, "eval_dense"):
            dense = scored(prepared.evaluate, loaded.model, "the unpruned model")
            metrics.update({f"{key}_dense": dense[key] for key in BASELINE_KEYS if key in dense})
    ctx = PruneContext(
        model=loaded.model, layers=prepared.layers, sparsity=float(cfg.sparsity), nm=prepared.nm,
        options=prepared.options, device=loaded.device, calibration=prepared.calibration,
        loaded=loaded, evaluate=prepared.evaluate, run_dir=run_dir,
    )
    params_before = sum(p.numel() for p in loaded.model.parameters())
    # the model before pruning, benchmarked beside the pruned one (speedups as ratios within this run)
    unpruned = copy.deepcopy(loaded.model) if benchmark.keeps_unpruned_copy(cfg.benchmark) and method.prunes else None
    with stage(timings, "prune"):
        if method.prunes:
            ctx.layer_sparsity = ALLOCATIONS.get(cfg.allocation)(ctx, cfg)
        if schedules.is_oneshot(cfg):  # other schedules prune during fine-tuning
            method.prune(ctx)
    # A structured method replaced layers (or whole blocks): count what the model has now.
    layers = select_layers(loaded.model, cfg.targets, cfg.ignore) if method.reshapes else prepared.layers
    if prepared.finetune is not None:
        with stage(timings, "finetune"):
            metrics.update(prepared.finetune.run(ctx, layers, prepared.evaluate, run_dir, keep_masks=method.prunes))
        metrics["finetune_s"] = timings["finetune"]
    summary, layer_rows = sparsity_summary(loaded.model, layers)
    summary["params_removed"] = params_before - summary["params_total"]
    summary["params_removed_frac"] = summary["params_removed"] / params_before
    with stage(timings, "eval"):
        evaluated = "the pruned model" if method.prunes else f"the model (method={cfg.method.name}, not pruned)"
        metrics.update(scored(prepared.evaluate, loaded.model, evaluated))
    if "zeroshot" in metrics:
        write_csv(run_dir / "zeroshot.csv", zeroshot.table(metrics), zeroshot.TABLE_COLUMNS)
    with stage(timings, "benchmark"):
        metrics.update(BENCHMARKS.get(cfg.benchmark.name)(BenchmarkContext(loaded, cfg.benchmark, run_dir, layers, unpruned)))
    del unpruned
    if cfg.save_model:
        with stage(timings, "save"):
            save_model(loaded, run_dir / "model")
    record = base_record(cfg, run_dir, overrides)
    record["calibration"].update(ctx.stats.pop("calibration", {}))  # settings + per-pass timings
    metrics.update(summary)
    metrics.update(ctx.stats)
    metrics.update(
        prune_s=timings["prune"] + timings.get("calibration_data", 0.0) + metrics.get("schedule_prune_s", 0.0),  # calibration + pruning
        eval_s=timings["eval"],
        total_s=sum(timings.values()),  # every stage, load included
        timings=timings,
        peak_memory_mb=peak_memory_mb(loaded.device),
        environment=environment(loaded.device),
    )
    return record | metrics | {"status": "completed"}, layer_rows


def scored(evaluate: Callable[[torch.nn.Module], dict], model: torch.nn.Module, which: str) -> dict:
    """``evaluate(model)``; a result that is no number names which model produced it."""
    try:
        return evaluate(model)
    except RunFailedError as err:
        raise RunFailedError(f"{err}: from {which}") from None


def base_record(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
    """The identifying fields every run record has, completed or failed."""
    return {
        "run_id": run_id(cfg),
        "status": "failed",
        "model": cfg.model.name,
        "method": cfg.method.name,
        "finetune": finetune.kind_of(cfg),
        "schedule": (cfg.get("schedule") or {}).get("name", "oneshot"),
        "pattern": cfg.get("pattern") or "unstructured",
        "sparsity_target": cfg.sparsity if METHODS.get(cfg.method.name).prunes else 0.0,
        "run_dir": str(run_dir),
        "overrides": list(overrides),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "calibration": {"source": data_source(cfg, "calibration"), "nsamples": cfg.data.nsamples, "seqlen": cfg.data.seqlen, "seed": cfg.data.seed},
    }


def data_source(cfg: DictConfig, role: str) -> str:
    """The calibration / eval source: an image model's ``model.dataset``, else ``data.<role>``."""
    dataset = cfg.model.get("dataset")
    return str(dataset.source) if dataset is not None and cfg.model.get("input_shape") else str(cfg.data[role].source)


def save_model(loaded: LoadedModel, folder: Path) -> None:
    """``save_pretrained`` (safetensors) plus the tokenizer, loadable with ``model=hf``; a model without
    ``save_pretrained`` (CNNs): its state dict as ``model.safetensors``, loadable with ``model.checkpoint``."""
    if not hasattr(loaded.model, "save_pretrained"):
        from prunecli.models.vision import save_safetensors

        save_safetensors(loaded.model, folder / "model.safetensors")
        return
    loaded.model.save_pretrained(folder, safe_serialization=True)
    loaded.tokenizer.save_pretrained(folder)


def eval_description(cfg: DictConfig) -> str:
    """What the evaluation scores: perplexity on ``data.eval``, zero-shot tasks, an image model's
    test split, or a text classifier's test split (``eval.accuracy.max_examples``)."""
    parts = []
    for name in evaluation.selected(cfg):
        if name == "zeroshot":
            shot = cfg.eval.zeroshot
            parts.append(f"zeroshot {','.join(shot.tasks)} ({shot.source})  limit={shot.limit} num_fewshot={shot.num_fewshot}")
        elif cfg.model.get("input_shape"):
            parts.append(f"{name} on {data_source(cfg, 'eval')}  eval_samples={cfg.model.dataset.get('eval_samples')}")
        elif name == "accuracy":
            parts.append(f"accuracy on the task's test split  max_examples={cfg.eval.accuracy.max_examples}")
        else:
            parts.append(f"{name} on {data_source(cfg, 'eval')}  max_eval_tokens={cfg.data.max_eval_tokens}")
    return "; ".join(parts) or "none"


def header_rows(cfg: DictConfig) -> list[tuple[str, str]]:
    """The resolved key settings, shown before the run starts."""
    data = cfg.data
    return [
        ("model", f"{cfg.model.name} ({cfg.model.dtype}, device={cfg.model.device})"),
        ("method", f"{cfg.method.name}  sparsity={cfg.sparsity}  pattern={cfg.get('pattern') or 'unstructured'}  allocation={cfg.allocation}"),
        ("targets", f"{cfg.targets}  ignore={list(cfg.ignore or [])}"),
        ("calibration", f"{data_source(cfg, 'calibration')}  nsamples={data.nsamples}"
                        + (f" seqlen={data.seqlen}" if not cfg.model.get("input_shape") else "") + f" seed={data.seed}"),
        ("eval", eval_description(cfg)),
        ("benchmark", cfg.benchmark.name),
    ] + ([("finetune", f"{finetune.kind_of(cfg)}  schedule={schedules.describe(cfg)}")] if finetune.kind_of(cfg) != "none" else [])


def zeroshot_table_rows(metrics: dict) -> list[dict]:
    """Per zero-shot task: examples, acc and acc_norm of the pruned model and of the unpruned baseline."""
    rows = []
    for row in zeroshot.table(metrics):
        rows.append({"task": row["task"], "split": row["split"], "examples": row["examples"],
                     **{key: "" if row.get(key) is None else row[key] for key in ("acc_dense", "acc", "acc_norm_dense", "acc_norm")}})
    return rows


def result_table_rows(metrics: dict) -> list[tuple[str, str]]:
    """The key figures for the console summary."""
    keys = ["model", "method", "pattern", "sparsity_target", "sparsity_actual", "sparsity_all_params",
            "params_total", "params_nonzero", "params_removed", "params_removed_frac", "ppl_dense", "ppl_before_finetune", "ppl",
            "zeroshot_mean_dense", "zeroshot_mean", "zeroshot_mean_norm_dense", "zeroshot_mean_norm", "accuracy_dense", "accuracy_before_finetune", "accuracy", "f1", "finetune_s", "prefill_ms", "prefill_speedup", "decode_ms", "decode_speedup", "flops_ratio", "prune_s", "eval_s", "peak_memory_mb"]
    return [(key, console.format_value(metrics[key])) for key in keys if metrics.get(key) is not None]
