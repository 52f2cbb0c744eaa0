"""The run record: its id, the fields every record has, the one results schema, what the console shows.

:data:`RESULTS` is the one list of result columns, in order: ``results.csv`` writes all of them,
the console summary shows those marked ``summary``, ``prune report`` those marked ``report`` by
default. A record is written by :func:`write_run` (atomically, ``metrics.json`` last).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from prunecli import analysis as analyses
from prunecli import console, finetune, schedules
from prunecli import evaluate as evaluation
from prunecli.evaluate import zeroshot
from prunecli.methods import METHODS
from prunecli.models.hub import provenance_of, short_name
from prunecli.options import choice_of
from prunecli.outputs import write_csv, write_json

# (column, where it is shown besides results.csv: "summary" = the console after a run, "report" = prune report's default)
RESULTS: list[tuple[str, tuple[str, ...]]] = [
    ("run_id", ()), ("status", ()), ("model", ("summary", "report")), ("method", ("summary", "report")),
    ("pattern", ("summary", "report")), ("sparsity_target", ("summary", "report")), ("sparsity_actual", ("summary", "report")),
    ("update", ("summary", "report")), ("pruned_from", ()), ("finetune", ()), ("schedule", ()), ("analysis", ()),
    # what the figures were measured on: runs that differ in one are never averaged together (report, plots)
    ("eval_source", ()), ("eval_tokens", ()), ("max_eval_tokens", ()), ("calibration_source", ()), ("calibration_nsamples", ()),
    ("calibration_seqlen", ()), ("calibration_seed", ()), ("benchmark", ()),
    ("criterion", ()), ("gqa", ()), ("bias_compensation", ()),  # structured methods (empty for the others)
    ("sparsity_all_params", ("summary",)), ("params_total", ("summary",)), ("params_nonzero", ("summary",)),
    ("params_removed", ("summary",)), ("params_removed_frac", ("summary",)),
    ("ppl", ("summary", "report")), ("ppl_dense", ("summary", "report")), ("nll", ()),
    ("zeroshot_mean", ("summary",)), ("zeroshot_mean_dense", ("summary",)),
    ("zeroshot_mean_norm", ("summary",)), ("zeroshot_mean_norm_dense", ("summary",)), ("ppl_before_finetune", ("summary",)),
    ("accuracy", ("summary",)), ("accuracy_dense", ("summary",)), ("accuracy_before_finetune", ("summary",)), ("f1", ("summary",)),
    ("f1_before_finetune", ()), ("finetune_epochs", ()), ("finetune_steps", ()), ("finetune_s", ("summary",)),
    ("prefill_ms", ("summary", "report")), ("prefill_tokens_per_s", ()), ("prefill_speedup", ("summary",)),
    ("decode_ms", ("summary",)), ("decode_tokens_per_s", ()), ("decode_speedup", ("summary",)),
    ("latency_reference", ()), ("prefill_spread", ()), ("prefill_trust", ()), ("decode_spread", ()), ("decode_trust", ()),
    ("flops", ()), ("flops_ratio", ("summary",)), ("model_mb", ()), ("disk_mb_dense", ()), ("disk_mb_csr", ()), ("disk_mb_bitmask", ()),
    ("prune_s", ("summary", "report")), ("prune_over_floor", ("summary",)), ("eval_s", ("summary", "report")), ("total_s", ()), ("peak_memory_mb", ("summary",)),
    ("error", ()), ("run_dir", ()),
]
RESULT_COLUMNS = [column for column, _ in RESULTS]
# Columns that say on what a figure was measured (eval_tokens: what the evaluator really scored).
SETTING_COLUMNS = ["eval_source", "eval_tokens", "max_eval_tokens", "calibration_source", "calibration_nsamples",
                   "calibration_seqlen", "calibration_seed", "benchmark"]
SUMMARY_COLUMNS = [column for column, shown in RESULTS if "summary" in shown]
REPORT_COLUMNS = [column for column, shown in RESULTS if "report" in shown]

# Keys that say how to run, not what to compute: not part of the run id.
BOOKKEEPING_KEYS = ("resume", "resume_root", "save_model", "logger", "baseline_cache")
# Groups whose default changes nothing: left out of the run id, so ids from before they existed still match.
NEUTRAL_DEFAULTS = {"finetune": {"name": "none"}, "schedule": {"name": "oneshot"}, "analysis": {"name": "none"}, "update": {"name": "none"}}


def run_id(cfg: DictConfig) -> str:
    """Stable id: hash of the resolved run config (Hydra's own settings and bookkeeping excluded)."""
    resolved = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items()
                if k not in BOOKKEEPING_KEYS and NEUTRAL_DEFAULTS.get(k, ()) != v}
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:12]


def prunes(cfg: DictConfig) -> bool:
    """Whether this run prunes its model: the method changes it and no analysis runs in its place."""
    return METHODS.get(cfg.method.name).prunes and analyses.selected(cfg) is None


def base_record(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
    """The identifying fields every run record has, completed or failed. A model prunecli saved
    carries what produced it (:func:`provenance`): its run id is ``pruned_from``, and a run that
    only evaluates it (a method that prunes nothing) is recorded with that method, pattern, sparsity
    and update -- the model it scored is that pruned model."""
    source = model_provenance(cfg)
    produced = source if source and not prunes(cfg) else {}
    return {
        "run_id": run_id(cfg),
        "status": "failed",
        "model": model_name(cfg, source),
        "method": produced.get("method", cfg.method.name),
        "finetune": finetune.kind_of(cfg),
        "schedule": choice_of(cfg, "schedule", "oneshot"),
        "pattern": produced.get("pattern", "structured" if METHODS.get(cfg.method.name).reshapes else cfg.get("pattern") or "unstructured"),
        "analysis": choice_of(cfg, "analysis"),
        "update": produced.get("update", choice_of(cfg, "update")),
        "pruned_from": (source or {}).get("run_id"),
        "sparsity_target": produced.get("sparsity_target", cfg.sparsity if prunes(cfg) else 0.0),
        "run_dir": str(run_dir),
        "overrides": list(overrides),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "calibration": {"source": data_source(cfg, "calibration"), "nsamples": cfg.data.nsamples, "seqlen": cfg.data.seqlen, "seed": cfg.data.seed},
        "eval_source": data_source(cfg, "eval"), "max_eval_tokens": cfg.data.max_eval_tokens,
        "calibration_source": data_source(cfg, "calibration"), "calibration_nsamples": cfg.data.nsamples,
        "calibration_seqlen": cfg.data.seqlen, "calibration_seed": cfg.data.seed, "benchmark": choice_of(cfg, "benchmark"),
    }


def model_provenance(cfg: DictConfig) -> dict | None:
    """What pruned the run's model, when it is a local folder prunecli saved (``model=hf``)."""
    return provenance_of(cfg.model.name_or_path) if cfg.model.source == "hf" else None


def model_name(cfg: DictConfig, source: dict | None) -> str:
    """``model.name``; for ``model=hf`` left at its default (the path), a short one: the source model's
    name a prunecli-saved folder records (``source``: its :func:`model_provenance`), else :func:`short_name`."""
    if cfg.model.source == "hf" and cfg.model.name == cfg.model.name_or_path:
        return str(source["model"]) if source and source.get("model") else short_name(cfg.model.name_or_path)
    return str(cfg.model.name)


def provenance(record: dict, summary: dict) -> dict:
    """What a saved model records of the run that produced it (``config.json``'s ``prunecli_provenance``)."""
    from prunecli import __version__

    return {"model": record["model"], "method": record["method"], "pattern": record["pattern"],
            "sparsity_target": record["sparsity_target"], "sparsity_actual": summary.get("sparsity_actual"),
            "update": record["update"], "run_id": record["run_id"], "prunecli": __version__}


def data_source(cfg: DictConfig, role: str) -> str:
    """The calibration / eval source: an image model's ``model.dataset``, else ``data.<role>`` (a file: ``text_file:<path>``)."""
    dataset = cfg.model.get("dataset")
    node = dataset if dataset is not None and cfg.model.get("input_shape") else cfg.data[role]
    path = node.get("path")
    return f"{node.source}:{path}" if path else str(node.source)


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


def header_rows(cfg: DictConfig, schedule: schedules.ScheduleOptions, calibrated: bool) -> list[tuple[str, str]]:
    """The resolved key settings (``schedule``: the run's, typed), shown before the run starts; the
    calibration line only for a run that draws calibration data (``calibrated``)."""
    data, update = cfg.data, choice_of(cfg, "update")
    source = model_provenance(cfg)
    rows = [("model", f"{model_name(cfg, source)} ({cfg.model.dtype}, device={cfg.model.device})")]
    if source:
        rows.append(("pruned by", f"{source.get('method')}  pattern={source.get('pattern')}  sparsity={source.get('sparsity_target')}"
                                  f"  (run {source.get('run_id')}, sparsity_actual={source.get('sparsity_actual')})"))
    method = METHODS.get(cfg.method.name)
    if method.reshapes:  # no zeros pattern: whole units leave the model
        own = {key: cfg.method[key] for key in ("criterion", "allocation") if key in cfg.method}
        rows.append(("method", f"{cfg.method.name}  removes {cfg.sparsity} of its units (structured: smaller shapes, not zeros)  "
                               + "  ".join(f"{key}={value}" for key, value in own.items())))
    elif method.prunes:
        rows.append(("method", f"{cfg.method.name}  sparsity={cfg.sparsity}  pattern={cfg.get('pattern') or 'unstructured'}  "
                               f"allocation={cfg.allocation}" + (f"  update={update}" if update != "none" else "")))
    else:  # sparsity, pattern and allocation mean nothing to it
        rows.append(("method", f"{cfg.method.name} (prunes nothing: the model is scored as loaded)"))
    if analyses.selected(cfg) is not None:
        rows.append(("analysis", f"{cfg.analysis.name} (the model stays unpruned)"))
    rows.append(("targets", f"{cfg.targets}  ignore={list(cfg.ignore or [])}"))
    if calibrated:
        seqlen = f" seqlen={data.seqlen}" if not cfg.model.get("input_shape") else ""
        rows.append(("calibration", f"{data_source(cfg, 'calibration')}  nsamples={data.nsamples}{seqlen} seed={data.seed}"))
    rows += [("eval", eval_description(cfg)), ("benchmark", cfg.benchmark.name)]
    if finetune.kind_of(cfg) != "none":
        rows.append(("finetune", f"{finetune.kind_of(cfg)}  schedule={schedules.describe(schedule, cfg.sparsity)}"))
    return rows


def zeroshot_table_rows(metrics: dict) -> list[dict]:
    """Per zero-shot task: examples, acc and acc_norm of the pruned model and of the unpruned baseline."""
    rows = []
    for row in zeroshot.table(metrics):
        rows.append({"task": row["task"], "split": row["split"], "examples": row["examples"],
                     **{key: "" if row.get(key) is None else row[key] for key in ("acc_dense", "acc", "acc_norm_dense", "acc_norm")}})
    return rows


def result_table_rows(metrics: dict) -> list[tuple[str, str]]:
    """The key figures for the console summary (:data:`SUMMARY_COLUMNS` the run has); a structured run's
    removed units lead (its zeros are not what it pruned)."""
    rows = [(key, console.format_value(metrics[key])) for key in SUMMARY_COLUMNS if metrics.get(key) is not None]
    if metrics.get("structured"):
        rows.insert(0, ("structure removed", structure_removed(metrics["structured"])))
    return rows


def structure_removed(structure: dict) -> str:
    """What a structured method took out, from its ``metrics.json`` record: units per layer (heads / FFN
    neurons), filters per group, or the blocks removed."""
    if structure["kind"] == "layers":
        return f"blocks {structure['removed_blocks']} removed"
    if structure["kind"] == "filters":
        units, removed, noun = [g["filters"] for g in structure["groups"]], [g["removed"] for g in structure["groups"]], "filters"
    else:
        units, removed, noun = structure["units_per_layer"], structure["removed_per_layer"], f"{structure['kind']} units"
    kept = [total - gone for total, gone in zip(units, removed)]
    return f"{sum(removed)} of {sum(units)} {noun}; kept per layer {compact_counts(kept)} of {compact_counts(units)}"


def latency_notes(metrics: dict) -> list[str]:
    """What the console says under a run's latency figures: that they have no same-run reference
    (only absolute times, comparable across runs only on the same idle machine), and which are noisy."""
    notes = []
    phases = [phase for phase in ("prefill", "decode") if metrics.get(f"{phase}_ms") is not None]
    if phases and metrics.get("latency_reference") == "none":
        notes.append(f"note: {', '.join(p + '_ms' for p in phases)} has no same-run reference (benchmark.unpruned=false): no speedup "
                     "can be read from it, and it compares with other runs' only on the same idle machine")
    notes += [f"warning: {phase}_ms {metrics[f'{phase}_trust']}" for phase in phases if metrics.get(f"{phase}_trust", "ok") != "ok"]
    return notes


def compact_counts(counts: list[int]) -> str:
    """``30x1152`` for equal counts, else the list."""
    return f"{len(counts)}x{counts[0]}" if counts and len(set(counts)) == 1 else str(list(counts))


def write_run(run_dir: Path, metrics: dict, layers: list[dict]) -> None:
    """layers.csv, results.csv, then metrics.json (last: its presence marks the run finished)."""
    if layers:
        write_csv(run_dir / "layers.csv", layers, list(layers[0]))
    write_csv(run_dir / "results.csv", [metrics], RESULT_COLUMNS)
    write_json(run_dir / "metrics.json", metrics)
