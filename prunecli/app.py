"""The Hydra task behind ``prune run``: thin glue between Hydra and :mod:`prunecli.pipeline`.

* Bad input found before any stage runs leaves nothing behind in a single run: what the run
  added to its directory is removed (:mod:`prunecli.rundir`; a directory that existed before
  keeps every file it had); in a sweep the job is recorded as ``failed`` and the sweep goes on.
* SIGTERM / SIGINT: the run is recorded as ``status: interrupted`` with the signal and the
  stage, then the process stops (128 + the signal number).
* A failure after that point is written as ``status: failed`` with the reason; the
  traceback goes to the run's log file, never to the console.
* Resume (``resume=auto``: on in sweeps): a job whose run id already has a ``completed``
  record under ``resume_root`` is skipped and recorded as ``skipped``.
* :class:`SweepSummary` (a Hydra callback) prints completed / skipped / failed counts at the
  end of a sweep, whatever the launcher, and makes ``prune`` exit non-zero on failures.
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from prunecli import console, pipeline, records, rundir
from prunecli.config import config_dir
from prunecli.errors import PruneError
from prunecli.interrupts import Interrupted, raise_on_signals
from prunecli.tracking import track

log = logging.getLogger("prunecli")

# File times may be coarser than the clock (whole seconds on some file systems).
MTIME_SLACK_S = 2.0

# Set by SweepSummary at the end of a sweep in this process: the failed job records.
SWEEP_FAILURES: list[dict] = []


def record(cfg: DictConfig, run_dir: Path, overrides: list[str], fields: dict) -> None:
    """A run record without results (failed, interrupted): the identifying fields plus ``fields``."""
    records.write_run(run_dir, records.base_record(cfg, run_dir, overrides) | fields, [])


def record_failure(cfg: DictConfig, run_dir: Path, overrides: list[str], err: BaseException) -> None:
    message = str(err) if isinstance(err, PruneError) else f"{type(err).__name__}: {err}"
    record(cfg, run_dir, overrides, {"error": message, "error_type": type(err).__name__})


def log_traceback(message: str, err: BaseException) -> None:
    """``message`` and the traceback of ``err`` into the run's log file only (Hydra's file handler):
    the console gets one line."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, (), (type(err), err, err.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def resume_enabled(cfg: DictConfig, multirun: bool) -> bool:
    setting = cfg.get("resume", "auto")
    return multirun if setting == "auto" else bool(setting)


def completed_run(run_id: str, root: Path, own: Path) -> Path | None:
    """A finished run directory with this id (its metrics.json says completed): the job's own
    ``own`` directory first (a sweep re-run into the same sweep dir), else any under ``root``."""
    for metrics in itertools.chain([own / "metrics.json"], root.rglob("metrics.json")):  # lazily: stop at the first
        if not metrics.is_file() or not (metrics.parent / "results.csv").exists():
            continue
        try:
            record = json.loads(metrics.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if record.get("run_id") == run_id and record.get("status") == "completed":
            return metrics.parent
    return None


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="run")
def run(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    label = f"job {hydra_cfg.job.num} ({' '.join(overrides) or 'defaults'})" if multirun else "run"
    logging.captureWarnings(True)  # Python warnings go through logging: into prune.log as well as the console
    with raise_on_signals():
        try:
            return run_job(cfg, run_dir, overrides, multirun, label)
        except Interrupted as stop:  # recorded, then the process stops (a sweep too: the user asked)
            where = stop.stage or "setup"
            record(cfg, run_dir, overrides, {"status": "interrupted", "error": f"interrupted by {stop.signal_name} during stage {where}",
                                             "interrupted_signal": stop.signal_name, "interrupted_stage": where})
            console.error(f"{label} interrupted by {stop.signal_name} during stage {where}: recorded as interrupted in {run_dir}")
            stop.recorded = True
            raise
        finally:
            if multirun:
                rundir.unlock(run_dir)


def run_job(cfg: DictConfig, run_dir: Path, overrides: list[str], multirun: bool, label: str) -> float | None:
    if multirun:  # a single run's directory is locked by rundir.RunDirGuard before Hydra writes there
        try:
            rundir.lock(run_dir)
        except PruneError as err:  # another process runs this job: leave its folder alone
            console.error(f"{label}: {err}")
            return None
    if resume_enabled(cfg, multirun):
        done = completed_run(records.run_id(cfg), Path(cfg.get("resume_root", "outputs")), run_dir)
        if done is not None and done.resolve() == run_dir.resolve():
            console.console.print(f"{label}: skipped, already completed here ({run_dir})")  # its record stays as it is
            return None
        if done is not None:
            records.write_run(run_dir, records.base_record(cfg, run_dir, overrides) | {"status": "skipped", "completed_run_dir": str(done)}, [])
            console.console.print(f"{label}: skipped, already completed in {done}")
            return None
    try:
        prepared = pipeline.prepare(cfg, run_dir)
    except PruneError as err:
        if multirun:
            record_failure(cfg, run_dir, overrides, err)
            console.error(f"{label}: {err}")
            return None
        rundir.discard_new(run_dir)  # only what this run added: never a folder or file that was there before
        console.error(str(err))
        sys.exit(2)
    except Exception as err:  # an unexpected failure while loading: recorded like a failed run
        prepared = None
        failure = err
    else:
        failure = None
    if prepared is not None:
        console.console.print(console.table("prune run", records.header_rows(cfg, prepared.checked.schedule, prepared.calibration is not None)))
        try:
            metrics, layers = pipeline.execute(prepared, run_dir, overrides)
        except Exception as err:  # any failure of a started run is recorded, not lost
            failure = err
    if failure is not None:
        log_traceback(f"{label} failed", failure)
        record_failure(cfg, run_dir, overrides, failure)
        console.error(f"{label} failed: {failure} (details in {run_dir})")
        if multirun:
            return None
        sys.exit(1)
    records.write_run(run_dir, metrics, layers)
    track(prepared.checked.logger, cfg, run_dir, metrics)
    results = records.result_table_rows(metrics)
    console.console.print(console.table("results", results))
    log.info("results: %s", "  ".join(f"{key}={value}" for key, value in results))  # prune.log holds them too
    for note in records.latency_notes(metrics):
        log.warning("%s", note)  # on the console and in prune.log
    if "zeroshot" in metrics:
        rows = records.zeroshot_table_rows(metrics)
        console.console.print(console.table("zero-shot accuracy (lm-evaluation-harness)", rows, list(rows[0])))
    console.console.print(f"run directory: {run_dir}")
    return metrics.get("ppl")


class SweepSummary(Callback):
    """At the end of a sweep: count this sweep's jobs by status and list the failed ones.

    A job folder belongs to this sweep when Hydra wrote its ``.hydra/`` after the sweep started
    (folders of an earlier sweep into the same directory are left out); a ``completed`` record
    older than the job's ``.hydra/`` (which Hydra rewrites when the job starts) was found finished
    and is counted as ``skipped``.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time() - MTIME_SLACK_S

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        started = getattr(self, "started", 0.0)
        records = []
        for metrics in sorted(Path(config.hydra.sweep.dir).rglob("metrics.json")):
            stamp = metrics.parent / ".hydra" / "overrides.yaml"
            try:
                if stamp.exists() and stamp.stat().st_mtime < started:
                    continue
                record = json.loads(metrics.read_text())
                if record.get("status") == "completed" and stamp.exists() and metrics.stat().st_mtime <= stamp.stat().st_mtime:
                    record["status"] = "skipped"  # finished before Hydra started this job in its folder
            except (OSError, json.JSONDecodeError):
                continue
            records.append(record)
        statuses = ["completed", "skipped", "failed"] + (["interrupted"] if any(r.get("status") == "interrupted" for r in records) else [])
        counts = {status: sum(r.get("status") == status for r in records) for status in statuses}
        failed = [r for r in records if r.get("status") == "failed"]
        SWEEP_FAILURES[:] = failed
        console.console.print(f"sweep {config.hydra.sweep.dir}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        for record in failed:
            console.console.print(f"  failed: {' '.join(record.get('overrides', [])) or '(defaults)'}: {record.get('error')}")
