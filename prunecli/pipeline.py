"""One run: load -> calibration/eval data -> prune -> evaluate -> benchmark -> write outputs.

:func:`prepare` does everything that can fail because of bad input (config values, missing
assets, model paths, data too short) before any result exists; :func:`execute` then runs
the timed stages and returns the record that :mod:`prunecli.records` writes.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig

from prunecli import analysis as analyses
from prunecli import benchmark, finetune, records, schedules
from prunecli import evaluate as evaluation
from prunecli.benchmark import BENCHMARKS, BenchmarkContext
from prunecli.data import DataOptions, calibration_windows, load_documents, parse_data
from prunecli.environment import environment, peak_memory, peak_memory_mb, reset_peak_memory
from prunecli.errors import PruneError, RunFailedError
from prunecli.evaluate import zeroshot
from prunecli.interrupts import Interrupted
from prunecli.methods import METHODS, Method, MethodOptions, PruneContext
from prunecli.methods.allocation import ALLOCATIONS
from prunecli.methods.masks import check_nm_fits, parse_pattern
from prunecli.methods import update as updates
from prunecli.methods.targets import select_layers, weight_matrix
from prunecli.models import LoadedModel, ModelOptions, load_model, parse_model
from prunecli.evaluate.baseline import baseline_key, cached_scores
from prunecli.methods.floor import floor
from prunecli.models.hub import PROVENANCE_KEY
from prunecli.outputs import write_csv
from prunecli.sparsity import layer_shapes, sparsity_summary
from prunecli.tracking import LoggerOptions, parse_logger

log = logging.getLogger(__name__)


# The unpruned model's scores kept beside the pruned model's, as <key>_dense.
BASELINE_KEYS = ("ppl", "accuracy", "zeroshot", "zeroshot_mean", "zeroshot_mean_norm")


@dataclass(frozen=True)
class Checked:
    """What :func:`validate` parsed from the config."""

    nm: tuple[int, int] | None  # the N:M pattern, None = unstructured
    model: ModelOptions  # the model source's, typed
    data: DataOptions
    eval: evaluation.EvalOptions
    method: Method
    options: MethodOptions  # the method's, typed
    analysis: analyses.Analysis | None  # runs in place of the prune stage (analysis=<name>)
    analysis_options: analyses.AnalysisOptions | None
    update: updates.Update | None  # re-fits the method's kept weights (update=<name>)
    update_options: Any
    benchmark: benchmark.BenchmarkOptions
    finetune: Any  # the fine-tune's FinetuneOptions
    schedule: schedules.ScheduleOptions
    logger: LoggerOptions

    @property
    def oneshot(self) -> bool:
        return schedules.is_oneshot(self.schedule)


def validate(cfg: DictConfig) -> Checked:
    """Check the values a user types, parsing each option group once."""
    sparsity = cfg.sparsity
    if not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise PruneError(f"sparsity must be a number in [0, 1) (got {sparsity!r})")
    model = parse_model(cfg.model)
    data = parse_data(cfg.data)
    evals = evaluation.parse_eval(cfg.eval)
    method = METHODS.get(cfg.method.name)
    options = method.parse(cfg.method)
    ALLOCATIONS.get(cfg.allocation)
    bench = benchmark.check_settings(cfg.benchmark)
    logger = parse_logger(cfg.get("logger"))
    nm = parse_pattern(cfg.get("pattern"), float(sparsity))
    if nm is not None and cfg.allocation != "uniform":
        raise PruneError(f"allocation={cfg.allocation} gives blocks different sparsities, which an N:M pattern cannot; use allocation=uniform")
    tuning = finetune.validate(cfg)
    schedule = schedules.validate(cfg)
    oneshot = schedules.is_oneshot(schedule)
    analysis = analyses.selected(cfg)
    analysis_options = None
    if analysis is not None:
        analysis_options = analysis.parse(cfg.analysis, cfg.method.name)
        if finetune.kind_of(cfg) != "none" or not oneshot:
            raise PruneError(f"analysis={analysis.name} leaves the model unpruned: use finetune=none schedule=oneshot")
    update = updates.selected(cfg)
    update_options = None
    if update is not None:
        update_options = update.parse(cfg["update"], method)
        if analysis is not None or not oneshot:
            raise PruneError(f"update={update.name} re-fits the weights of a one-shot pruning: use schedule=oneshot analysis=none")
    checked = Checked(nm, model, data, evals, method, options, analysis, analysis_options, update, update_options, bench, tuning, schedule, logger)
    check_offload(cfg, checked)
    return checked


def check_offload(cfg: DictConfig, checked: Checked) -> None:
    """With ``model.offload=cpu|disk`` the model is never whole on its device: refuse what needs it so."""
    mode = getattr(checked.model, "offload", "none")
    if mode == "none":
        return
    needs_whole = [
        (not checked.method.runs_offloaded(checked.options), f"method={cfg.method.name} (with these options) reads every layer at once"),
        (checked.update is not None, f"update={checked.update.name if checked.update else ''} keeps the dense weights of every layer"),
        (checked.analysis is not None, f"analysis={checked.analysis.name if checked.analysis else ''} scores the whole model per layer"),
        (finetune.kind_of(cfg) != "none", f"finetune={finetune.kind_of(cfg)} trains the whole model"),
        (not checked.oneshot, "a schedule other than oneshot fine-tunes the whole model"),
        (checked.benchmark.name != "none", f"benchmark={checked.benchmark.name} times the whole model on its device (use benchmark=none)"),
    ]
    for refused, reason in needs_whole:
        if refused:
            raise PruneError(f"model.offload={mode} keeps only one block on the device, but {reason}")


@dataclass
class Prepared:
    """Everything a run needs, built and checked before the first timed stage."""

    cfg: DictConfig
    checked: Checked
    loaded: LoadedModel
    layers: dict
    evaluate: Callable[[torch.nn.Module], dict]
    calibration: torch.Tensor | None  # (nsamples, seqlen) windows, for data-aware methods only
    stages: Stages = field(default_factory=lambda: Stages())
    finetune: finetune.FineTune | None = None  # checked training data and settings (finetune != none)


@dataclass
class Stages:
    """Each stage's wall time (seconds, device synchronised) and peak memory (:func:`peak_memory`)."""

    seconds: dict = field(default_factory=dict)
    peak_mb: dict = field(default_factory=dict)

    @contextmanager
    def time(self, name: str):
        start = time.perf_counter()
        reset_peak_memory()
        log.info("stage %s ...", name)
        try:
            yield
        except Interrupted as stop:  # the innermost stage names where the run was stopped
            stop.stage = stop.stage or name
            raise
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds[name] = time.perf_counter() - start
        self.peak_mb[name] = peak_memory()
        log.info("stage %s done in %.1f s (peak %s MiB)", name, self.seconds[name], self.peak_mb[name])


def prepare(cfg: DictConfig, run_dir: Path | None = None) -> Prepared:
    """Validate, load the model (offloaded parts under ``run_dir``, a temporary folder if None) and build
    the data; a failure closes the model's offloading (its folder is removed)."""
    checked = validate(cfg)
    stages = Stages()
    torch.manual_seed(cfg.seed)
    with stages.time("load"):
        loaded = load_model(checked.model, run_dir)
    try:
        return prepare_loaded(cfg, checked, loaded, stages)
    except BaseException:
        loaded.offload.close()
        raise


def prepare_loaded(cfg: DictConfig, checked: Checked, loaded: LoadedModel, stages: Stages) -> Prepared:
    nm, method, options = checked.nm, checked.method, checked.options
    data = checked.data
    if loaded.tokenizer is not None and data.seqlen > loaded.max_length:  # text models only
        raise PruneError(f"data.seqlen={data.seqlen} is longer than the context of {loaded.name} ({loaded.max_length} tokens)")
    benchmark.check_fits(loaded, checked.benchmark)
    if method.check_model is not None:  # e.g. a GQA ratio the shapes cannot honour
        method.check_model(options, float(cfg.sparsity), loaded.model)
    layers = select_layers(loaded.model, cfg.targets, cfg.ignore)
    if nm is not None:
        for name, module in layers.items():
            check_nm_fits(weight_matrix(module).shape[1], nm, name)
    with stages.time("data"):
        evaluate = evaluation.build(loaded, checked.eval, checked.model, data, cfg)
    windows = None
    if needs_calibration(cfg, checked):
        with stages.time("calibration_data"):
            if loaded.input_shape is not None:  # image model: (images, labels), a fixed subset of its dataset's train split
                from prunecli.data.vision import calibration_images

                windows = calibration_images(checked.model.dataset, loaded.input_shape, data.nsamples, data.seed)
            else:
                documents = load_documents(data.calibration)
                windows = calibration_windows(loaded.tokenizer, documents, data.nsamples, data.seqlen, data.seed)
    plan = None
    if finetune.kind_of(cfg) != "none":
        with stages.time("finetune_data"):
            plan = finetune.plan(loaded, cfg, checked.finetune, checked.schedule, data, windows)
    return Prepared(cfg, checked, loaded, layers, evaluate, windows, stages, plan)


def needs_calibration(cfg: DictConfig, checked: Checked) -> bool:
    """Data-aware methods (the descriptor says, from the options) use calibration windows; so do a
    weight update and the OWL allocation when the run prunes (no analysis in its place)."""
    prunes = checked.method.prunes and checked.analysis is None
    return checked.method.needs_calibration(checked.options) or (prunes and (checked.update is not None or cfg.allocation == "owl"))


def execute(prepared: Prepared, run_dir: Path, overrides: list[str]) -> tuple[dict, list[dict]]:
    """Run the timed stages; return the run record and the per-layer sparsity table. The model's
    offloading is closed at the end, whatever happens (its folder removed)."""
    try:
        return execute_stages(prepared, run_dir, overrides)
    finally:
        prepared.loaded.offload.close()


def execute_stages(prepared: Prepared, run_dir: Path, overrides: list[str]) -> tuple[dict, list[dict]]:
    cfg, checked, loaded, stages = prepared.cfg, prepared.checked, prepared.loaded, prepared.stages
    timings = stages.seconds
    method, analysis = checked.method, checked.analysis
    pruning = records.prunes(cfg)
    metrics: dict[str, Any] = {}
    if checked.eval.baseline and pruning:
        with stages.time("eval_dense"):
            dense, metrics["baseline_cached"] = cached_scores(cfg.baseline_cache, baseline_key(cfg, str(loaded.device)),
                                                              lambda: scored(prepared.evaluate, loaded.model, "the unpruned model"))
            log.info("dense baseline %s", f"read from the cache in {cfg.baseline_cache}" if metrics["baseline_cached"] else "evaluated")
            metrics.update({f"{key}_dense": dense[key] for key in BASELINE_KEYS if key in dense})
    ctx = PruneContext(
        model=loaded.model, layers=prepared.layers, sparsity=float(cfg.sparsity), nm=checked.nm,
        options=checked.options, device=loaded.device, calibration=prepared.calibration,
        example_input=loaded.example_input(1), offload=loaded.offload,
    )
    params_before = sum(p.numel() for p in loaded.model.parameters())
    shapes_before = layer_shapes(prepared.layers) if method.reshapes else {}  # layers.csv: original beside kept shapes
    # the model before pruning, benchmarked beside the pruned one (speedups as ratios within this run)
    unpruned = copy.deepcopy(loaded.model) if benchmark.keeps_unpruned_copy(checked.benchmark) and pruning else None
    if analysis is not None:  # in place of pruning; the model stays as loaded
        with stages.time("analysis"):
            metrics[analysis.name] = analysis.run(analyses.AnalysisContext(ctx, checked.analysis_options, prepared.evaluate, run_dir))
    with stages.time("prune"):
        if pruning:
            ctx.layer_sparsity = ALLOCATIONS.get(cfg.allocation)(ctx, cfg)
        if checked.oneshot and analysis is None and checked.update is not None:
            updates.prune_and_refit(ctx, method, checked.update, checked.update_options)
        elif checked.oneshot and analysis is None:  # other schedules prune during fine-tuning
            method.prune(ctx)
    # A structured method replaced layers (or whole blocks): count what the model has now.
    layers = select_layers(loaded.model, cfg.targets, cfg.ignore) if method.reshapes else prepared.layers
    if prepared.finetune is not None:
        with stages.time("finetune"):
            metrics.update(prepared.finetune.run(ctx, layers, prepared.evaluate, run_dir, keep_masks=pruning))
        metrics["finetune_s"] = timings["finetune"]
    summary, layer_rows = sparsity_summary(loaded.model, layers, loaded.offload.parts())
    layer_errors = ctx.stats.pop("layer_errors", {})  # per-layer figures of a method, as layers.csv columns
    for row in layer_rows:
        row.update(layer_errors.get(row["name"], {}))
    if shapes_before:
        layer_rows = [{"name": row["name"], "shape_before": shapes_before.get(row["name"], ""), **row} for row in layer_rows]
    summary["params_removed"] = params_before - summary["params_total"]
    summary["params_removed_frac"] = summary["params_removed"] / params_before
    with stages.time("eval"):
        evaluated = "the pruned model" if pruning else f"the model (method={cfg.method.name}, not pruned)"
        metrics.update(scored(prepared.evaluate, loaded.model, evaluated))
    if "zeroshot" in metrics:
        write_csv(run_dir / "zeroshot.csv", zeroshot.table(metrics), zeroshot.TABLE_COLUMNS)
    if checked.benchmark.name != "none":
        with stages.time("benchmark"):
            metrics.update(BENCHMARKS.get(checked.benchmark.name).run(BenchmarkContext(loaded, checked.benchmark, run_dir, layers, unpruned)))
    del unpruned
    record = records.base_record(cfg, run_dir, overrides)
    if cfg.save_model:
        with stages.time("save"):
            save_model(loaded, run_dir / "model", records.provenance(record, summary))
    record["calibration"].update(ctx.stats.pop("calibration", {}))  # settings + per-pass timings
    metrics.update(summary)
    metrics.update(ctx.stats)
    metrics.update(
        prune_s=timings["prune"] + timings.get("calibration_data", 0.0) + metrics.get("schedule_prune_s", 0.0),  # calibration + pruning
        eval_s=timings["eval"],
        total_s=sum(timings.values()),  # every stage, load included
        timings=timings,
        peak_memory_mb=peak_memory_mb(loaded.device, stages.peak_mb),
        stage_peak_mb=stages.peak_mb,
        environment=environment(loaded.device),
    )
    passes = [entry for entry in record["calibration"].values() if isinstance(entry, dict) and entry.get("flops")]
    if passes and checked.oneshot:  # the layer-wise passes' compute floor on this machine (methods/floor.py)
        shapes = {tuple(shape) for entry in passes for shape in entry["shapes"]}
        metrics["floor"] = floor(sum(entry["flops"] for entry in passes), shapes, metrics["prune_s"], loaded.device)
        metrics["prune_over_floor"] = metrics["floor"]["prune_over_floor"]
    return record | metrics | {"status": "completed"}, layer_rows


def scored(evaluate: Callable[[torch.nn.Module], dict], model: torch.nn.Module, which: str) -> dict:
    """``evaluate(model)``; a result that is no number names which model produced it."""
    try:
        return evaluate(model)
    except RunFailedError as err:
        raise RunFailedError(f"{err}: from {which}") from None


def save_model(loaded: LoadedModel, folder: Path, provenance: dict) -> None:
    """``save_pretrained`` (safetensors; an offloaded model's parts one by one, sharded) plus the tokenizer,
    loadable with ``model=hf``, its ``config.json`` saying what produced it (``provenance``, under
    ``prunecli_provenance``); a model without ``save_pretrained`` (CNNs): its state dict as
    ``model.safetensors``, loadable with ``model.checkpoint``. Written into ``<folder>.partial`` and
    renamed when complete: a run killed while saving leaves no folder that looks finished."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if hasattr(loaded.model, "save_pretrained"):
        setattr(loaded.model.config, PROVENANCE_KEY, provenance)
        loaded.offload.save(partial, loaded.tokenizer)
    else:
        from prunecli.models.vision import save_safetensors

        save_safetensors(loaded.model, partial / "model.safetensors")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
