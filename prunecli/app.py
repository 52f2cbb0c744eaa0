"""The Hydra task behind ``prune run``: thin glue between Hydra and :mod:`prunecli.pipeline`.

Bad input found before any stage runs leaves no run directory behind in a single run (it
is removed); in a sweep the job is recorded as failed and the sweep goes on. A failure
after that point is written as ``status: failed`` with the reason; the traceback goes to
the run's log file, never to the console.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from prunecli import console, outputs, pipeline
from prunecli.config import config_dir
from prunecli.errors import PruneError

log = logging.getLogger("prunecli")

# Jobs of this process that failed, for the sweep summary and the exit code.
FAILED: list[dict] = []


def record_failure(cfg: DictConfig, run_dir: Path, overrides: list[str], err: BaseException) -> dict:
    record = pipeline.base_record(cfg, run_dir, overrides) | {
        "error": f"{type(err).__name__}: {err}" if not isinstance(err, PruneError) else str(err),
        "error_type": type(err).__name__,
    }
    outputs.write_run(run_dir, record, [])
    FAILED.append(record)
    return record


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="run")
def run(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        prepared = pipeline.prepare(cfg)
    except PruneError as err:
        if multirun:
            record_failure(cfg, run_dir, overrides, err)
            console.error(f"job {hydra_cfg.job.num} ({' '.join(overrides)}): {err}")
            return None
        shutil.rmtree(run_dir, ignore_errors=True)
        console.error(str(err))
        sys.exit(2)
    console.console.print(console.table("prune run", pipeline.header_rows(cfg)))
    try:
        metrics, layers = pipeline.execute(prepared, run_dir, overrides)
    except Exception as err:  # any failure of a started run is recorded, not lost
        log.exception("run failed")
        record_failure(cfg, run_dir, overrides, err)
        console.error(f"run failed: {err} (details in {run_dir})")
        if multirun:
            return None
        sys.exit(1)
    outputs.write_run(run_dir, metrics, layers)
    console.console.print(console.table("results", pipeline.result_table_rows(metrics)))
    console.console.print(f"run directory: {run_dir}")
    return metrics.get("ppl")
