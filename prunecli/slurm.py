"""``hydra/launcher=slurm``: a sweep as one SLURM job array (submitit), every way a job dies handled.

:class:`SlurmLauncher` is the plugin's launcher with three changes:

* **before submitting**, the request is held against the partition (``sinfo``): CPUs, memory
  and GPUs a node cannot give, or an unknown partition, are one line naming the setting (sbatch
  would accept 8 CPUs on a 2-CPU node and leave the job pending forever); ``cpus_per_task`` /
  ``mem_gb`` left ``null`` take what a node has (at most 8 CPUs; its memory per CPU asked, at most
  32 GB); a ``signal_delay_s``
  over a quarter of the time limit is cut to that quarter (else every short job is signalled to
  checkpoint right after it starts); a request sbatch refuses is one line with sbatch's reason.
* **waiting** never hangs and never needs accounting: a job is done when its result file exists,
  or when it has left the queue (``squeue``) and its result has not appeared within
  ``RESULT_GRACE_S``. Its state comes from ``sacct`` where accounting runs, else from what
  ``slurmstepd`` wrote into the job's own log (``CANCELLED``, ``DUE TO TIME LIMIT``, ``DUE TO
  PREEMPTION``, ``DUE TO NODE FAILURE``, out-of-memory kills).
* **a job that died** (cancelled, timeout, preempted, node failure, out of memory, or a crash)
  is recorded in its job folder as ``status: failed`` with the reason; the other jobs go on and
  the sweep summary prints as for any failed job. Requeue on timeout / preemption is submitit's
  (``max_num_timeout`` > 0); a requeued job resumes by run id, so finished jobs are never redone.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as PluginSlurmLauncher
from omegaconf import open_dict

from prunecli import console
from prunecli.errors import PruneError

log = logging.getLogger(__name__)

POLL_S = 2.0
RESULT_GRACE_S = 60.0  # a job gone from the queue whose result file has not appeared by then has died
DEFAULT_MAX_CPUS, DEFAULT_MAX_MEM_GB = 8, 32
# submitit's executor-independent parameters; the others are passed as slurm_<name>
SHARED_PARAMETERS = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name", "stderr_to_stdout"}
# what slurmstepd writes into a job's log when SLURM ends it, most specific first
DEATHS = [
    (re.compile(r"CANCELLED AT \S+ DUE TO TIME LIMIT"), "timeout", "killed at its time limit (hydra.launcher.timeout_min)"),
    (re.compile(r"DUE TO PREEMPTION"), "preempted", "preempted by SLURM"),
    (re.compile(r"DUE TO NODE FAILURE"), "node_failure", "its node failed"),
    (re.compile(r"oom[-_ ]kill|Exceeded job memory limit|OUT_OF_MEMORY", re.I), "out_of_memory", "out of memory (hydra.launcher.mem_gb)"),
    (re.compile(r"\*\*\* JOB \S+ ON \S+ CANCELLED AT"), "cancelled", "cancelled (scancel)"),
]
# what submitit's own signal handler reports when it gave up requeueing a job (max_num_timeout)
SUBMITIT_GAVE_UP = [
    ("timed-out too many times", "timeout", "reached its time limit (hydra.launcher.timeout_min) and was not requeued (max_num_timeout)"),
    ("preempted too many times", "preempted", "preempted and not requeued again"),
]
SACCT_STATES = {"CANCELLED": ("cancelled", "cancelled (scancel)"), "TIMEOUT": ("timeout", "killed at its time limit (hydra.launcher.timeout_min)"),
                "PREEMPTED": ("preempted", "preempted by SLURM"), "NODE_FAIL": ("node_failure", "its node failed"),
                "OUT_OF_MEMORY": ("out_of_memory", "out of memory (hydra.launcher.mem_gb)"), "FAILED": ("crashed", "the job's process failed")}


def run_command(*command: str) -> subprocess.CompletedProcess:
    if shutil.which(command[0]) is None:
        raise PruneError(f"hydra/launcher=slurm needs SLURM's commands on this machine ({command[0]} not found)")
    return subprocess.run(list(command), capture_output=True, text=True, timeout=60)


def partition_nodes(partition: str | None) -> list[dict]:
    """``sinfo``'s nodes of ``partition`` (the default one if None): CPUs, memory (MB), GPUs."""
    result = run_command("sinfo", "-h", "-N", "-o", "%P|%c|%m|%G", *(["-p", partition] if partition else []))
    if result.returncode != 0:
        raise PruneError(f"sinfo failed: {(result.stderr.strip().splitlines() or ['no answer'])[0]}")
    nodes = []
    for line in result.stdout.split("\n"):
        if not line.strip():
            continue
        name, cpus, memory, gres = line.split("|")
        if partition is None and not name.endswith("*"):
            continue
        gpus = sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,(]+)?:(\d+)", gres))
        nodes.append({"partition": name.rstrip("*"), "cpus": int(cpus), "memory_mb": int(memory.rstrip("+") or 0), "gpus": gpus})
    if not nodes:
        raise PruneError(f"unknown SLURM partition {partition!r} (hydra.launcher.partition; sinfo lists none)" if partition
                         else "SLURM has no default partition: set hydra.launcher.partition")
    return nodes


def fit_request(params: dict) -> dict:
    """The launcher's parameters checked against the partition, ``null`` CPUs / memory filled in."""
    nodes = partition_nodes(params.get("partition"))
    where = f"partition {nodes[0]['partition']}"
    cpus = max(node["cpus"] for node in nodes)
    memory_gb = max(node["memory_mb"] for node in nodes) // 1024
    gpus = max(node["gpus"] for node in nodes)
    fitted = dict(params)
    if fitted.get("cpus_per_task") is None:
        fitted["cpus_per_task"] = min(cpus, DEFAULT_MAX_CPUS)
    if fitted.get("mem_gb") is None:  # the node's memory shared out by CPUs, so jobs fill a node by their CPUs
        fitted["mem_gb"] = max(1, min(memory_gb * fitted["cpus_per_task"] // cpus, DEFAULT_MAX_MEM_GB))
    tasks = int(fitted.get("tasks_per_node") or 1)
    if fitted["cpus_per_task"] * tasks > cpus:
        raise PruneError(f"hydra.launcher.cpus_per_task={fitted['cpus_per_task']} (x {tasks} tasks) is more than a node of {where} has "
                         f"({cpus} CPUs): the job would pend forever")
    if fitted["mem_gb"] > memory_gb:
        raise PruneError(f"hydra.launcher.mem_gb={fitted['mem_gb']} is more than a node of {where} has ({memory_gb} GB)")
    if (fitted.get("gpus_per_node") or 0) > gpus:
        raise PruneError(f"hydra.launcher.gpus_per_node={fitted['gpus_per_node']} but a node of {where} has {gpus} GPU(s): "
                         "set hydra.launcher.gpus_per_node=0, or choose a GPU partition (hydra.launcher.partition)")
    limit_s = int(fitted.get("timeout_min") or 60) * 60
    if int(fitted.get("signal_delay_s") or 0) > limit_s // 4:
        fitted["signal_delay_s"] = limit_s // 4
    return fitted


def sbatch_reason(text: str) -> str:
    """sbatch's own reason (``sbatch: error: ...``), else the last line said."""
    match = re.search(r"sbatch: error: ([^\n\\]+)", text)
    return match.group(1).strip() if match else (text.strip().splitlines() or ["sbatch failed"])[-1]


@contextmanager
def stderr_to(handle: Any):
    """File descriptor 2 (what child processes inherit) goes to ``handle`` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(handle.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


class WatchedSlurmLauncher(PluginSlurmLauncher):
    """The sweep as one job array; see the module doc."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        try:
            self.params = fit_request(self.params)
            jobs = self.submit(job_overrides, initial_job_idx)
        except PruneError as err:
            console.exit_with(err)
        console.console.print(f"submitted {len(jobs)} job(s) as SLURM array {jobs[0].job_id.split('_')[0]} "
                              f"(cpus_per_task={self.params['cpus_per_task']} mem_gb={self.params['mem_gb']} "
                              f"timeout_min={self.params['timeout_min']}); logs in {Path(str(self.params['submitit_folder'])).parent}")
        return self.wait_all(job_overrides, initial_job_idx, jobs)

    def submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        """One job array through submitit's public API (each job runs this launcher's ``__call__``,
        as the plugin's do); what sbatch refuses is one line."""
        import submitit
        from hydra.core.singleton import Singleton

        params = dict(self.params)
        executor = submitit.AutoExecutor(folder=params.pop("submitit_folder"), cluster="slurm",
                                         slurm_max_num_timeout=params.pop("max_num_timeout", 0))
        executor.update_parameters(**{key if key in SHARED_PARAMETERS else f"slurm_{key}": value for key, value in params.items()})
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        numbers = range(initial_job_idx, initial_job_idx + len(job_overrides))
        arguments = [(list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}", Singleton.get_state())
                     for overrides, number in zip(job_overrides, numbers)]
        with tempfile.TemporaryFile(mode="w+") as said:
            try:
                with stderr_to(said):  # sbatch writes its refusal to our stderr: it becomes the one line
                    return executor.map_array(self, *zip(*arguments))
            except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError, OSError) as err:
                said.seek(0)
                reason = sbatch_reason(f"{said.read()}\n{err}\n{getattr(err, 'stderr', '') or ''}")
                raise PruneError(f"SLURM refused the sweep: {reason} (check hydra.launcher: partition, gpus_per_node, "
                                 "cpus_per_task, mem_gb, timeout_min, additional_parameters)") from None

    def job_record(self, overrides: Sequence[str], number: int) -> tuple[Path, dict]:
        """Job ``number``'s folder and the identifying fields of its record (run id, model, method, ...),
        composed and resolved as the job itself composes them."""
        from prunecli import records

        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config.hydra.job):
            config.hydra.job.num = number
        saved = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(config)
        try:
            folder = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
            task = config.copy()
            with open_dict(task):
                del task["hydra"]
            return folder, records.base_record(task, folder, list(overrides))
        finally:
            HydraConfig.instance().cfg = saved

    def wait_all(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, jobs: list) -> list[JobReturn]:
        pending = {index: job for index, job in enumerate(jobs)}
        returns: dict[int, JobReturn] = {}
        gone_since: dict[int, float] = {}
        while pending:
            queued = queue_states()
            for index, job in list(pending.items()):
                if job.paths.result_pickle.exists():
                    returns[index] = self.finished(job, job_overrides[index], initial_job_idx + index)
                    del pending[index]
                elif job.job_id not in queued:
                    gone_since.setdefault(index, time.monotonic())
                    if time.monotonic() - gone_since[index] > RESULT_GRACE_S or job_state(job)[0] != "unknown":
                        returns[index] = self.died(job, job_overrides[index], initial_job_idx + index)
                        del pending[index]
            if pending:
                time.sleep(POLL_S)
        return [returns[index] for index in range(len(jobs))]

    def finished(self, job: Any, overrides: Sequence[str], number: int) -> JobReturn:
        try:
            result = job.results()[0]
        except Exception as err:  # the job's process raised (submitit pickled the error)
            return self.died(job, overrides, number, crash=str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__)
        error = read_record(self.job_record(overrides, number)[0]).get("error") or ""
        if any(text in error for text, _, _ in SUBMITIT_GAVE_UP):  # submitit's signal handler stopped the run inside the job
            return self.died(job, overrides, number, crash=error)
        return result

    def died(self, job: Any, overrides: Sequence[str], number: int, crash: str | None = None) -> JobReturn:
        """Record a job that SLURM ended (or that crashed) as failed in its folder, with the reason."""
        kind, reason = job_state(job)
        gave_up = [(k, r) for text, k, r in SUBMITIT_GAVE_UP if crash and text in crash]
        if gave_up:
            kind, reason = gave_up[0]
        elif kind == "unknown":
            kind, reason = ("crashed", crash) if crash else ("lost", f"left the queue without a result (no accounting to ask why; see {job.paths.stderr})")
        folder, base = self.job_record(overrides, number)
        record = read_record(folder)
        if record.get("status") != "completed":  # a job that never started has no record yet: the identifying fields
            fields = {"status": "failed", "error": f"SLURM job {job.job_id}: {reason}", "error_type": f"slurm_{kind}",
                      "slurm_job_id": job.job_id, "slurm_state": kind}
            from prunecli.records import write_run

            write_run(folder, {**base, **record, **fields}, [])
        console.error(f"job {number} ({' '.join(overrides)}): SLURM job {job.job_id} {reason}")
        result = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
        result.return_value = None
        return result


def queue_states() -> dict[str, str]:
    """Job (array task) id -> state, for every job SLURM still has in its queue."""
    result = run_command("squeue", "-h", "-r", "-o", "%i %T")
    if result.returncode != 0:
        return {}
    return dict(line.split(maxsplit=1) for line in result.stdout.split("\n") if line.strip())


def job_state(job: Any) -> tuple[str, str]:
    """(kind, reason) of a job that has left the queue: sacct where accounting runs, else its log."""
    if shutil.which("sacct"):
        result = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job.job_id, "-o", "State"], capture_output=True, text=True, timeout=60)
        state = result.stdout.strip().split("\n")[0].split(" ")[0] if result.returncode == 0 else ""
        if state in SACCT_STATES:
            return SACCT_STATES[state]
    for path in (job.paths.stderr, job.paths.stdout):
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue
        for pattern, kind, reason in DEATHS:
            if pattern.search(text):
                return kind, reason
    return "unknown", ""


def read_record(folder: Path) -> dict:
    import json

    try:
        return json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
