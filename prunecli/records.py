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
from prunecli.options import choice_of
from prunecli.outputs import write_csv, write_json

# (column, where it is shown besides results.csv: "summary" = the console after a run, "report" = prune report's default)
RESULTS: list[tuple[str, tuple[str, ...]]] = [
    ("run_id", ()), ("status", ()), ("model", ("summary", "report")), ("method", ("summary", "report")),
    ("pattern", ("summary", "report")), ("sparsity_target", ("summary", "report")), ("sparsity_actual", ("summary", "report")),
    ("update", ("summary", "report")), ("finetune", ()), ("schedule", ()), ("analysis", ()),
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
    ("flops", ()), ("flops_ratio", ("summary",)), ("model_mb", ()), ("disk_mb_dense", ()), ("disk_mb_csr", ()), ("disk_mb_bitmask", ()),
    ("prune_s", ("summary", "report")), ("eval_s", ("summary", "report")), ("total_s", ()), ("peak_memory_mb", ("summary",)),
    ("error", ()), ("run_dir", ()),
]
RESULT_COLUMNS = [column for column, _ in RESULTS]
# Columns that say on what a figure was measured (eval_tokens: what the evaluator really scored).
SETTING_COLUMNS = ["eval_source", "eval_tokens", "max_eval_tokens", "calibration_source", "calibration_nsamples",
                   "calibration_seqlen", "calibration_seed", "benchmark"]
SUMMARY_COLUMNS = [column for column, shown in RESULTS if "summary" in shown]
REPORT_COLUMNS = [column for column, shown in RESULTS if "report" in shown]

# Keys that say how to run, not what to compute: not part of the run id.
BOOKKEEPING_KEYS = ("resume", "resume_root", "save_model", "logger")
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
    """The identifying fields every run record has, completed or failed."""
    return {
        "run_id": run_id(cfg),
        "status": "failed",
        "model": cfg.model.name,
        "method": cfg.method.name,
        "finetune": finetune.kind_of(cfg),
        "schedule": choice_of(cfg, "schedule", "oneshot"),
        "pattern": cfg.get("pattern") or "unstructured",
        "analysis": choice_of(cfg, "analysis"),
        "update": choice_of(cfg, "update"),
        "sparsity_target": cfg.sparsity if prunes(cfg) else 0.0,
        "run_dir": str(run_dir),
        "overrides": list(overrides),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "calibration": {"source": data_source(cfg, "calibration"), "nsamples": cfg.data.nsamples, "seqlen": cfg.data.seqlen, "seed": cfg.data.seed},
        "eval_source": data_source(cfg, "eval"), "max_eval_tokens": cfg.data.max_eval_tokens,
        "calibration_source": data_source(cfg, "calibration"), "calibration_nsamples": cfg.data.nsamples,
        "calibration_seqlen": cfg.data.seqlen, "calibration_seed": cfg.data.seed, "benchmark": choice_of(cfg, "benchmark"),
    }


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
    rows = [
        ("model", f"{cfg.model.name} ({cfg.model.dtype}, device={cfg.model.device})"),
        ("method", f"{cfg.method.name}  sparsity={cfg.sparsity}  pattern={cfg.get('pattern') or 'unstructured'}  allocation={cfg.allocation}"
                   + (f"  update={update}" if update != "none" else "")),
    ]
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
    """The key figures for the console summary (:data:`SUMMARY_COLUMNS` the run has)."""
    return [(key, console.format_value(metrics[key])) for key in SUMMARY_COLUMNS if metrics.get(key) is not None]


def write_run(run_dir: Path, metrics: dict, layers: list[dict]) -> None:
    """layers.csv, results.csv, then metrics.json (last: its presence marks the run finished)."""
    if layers:
        write_csv(run_dir / "layers.csv", layers, list(layers[0]))
    write_csv(run_dir / "results.csv", [metrics], RESULT_COLUMNS)
    write_json(run_dir / "metrics.json", metrics)
