"""``hydra/launcher=slurm`` against a real one-node SLURM cluster started for these tests
(tests/slurm_cluster.py; skipped with the reason where it cannot run: not root, SLURM missing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import tiny_args
from tests.slurm_cluster import LocalSlurm, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the slurm extra (hydra-submitit-launcher)")

PRUNE = [sys.executable, "-c", "from prunecli.cli import main; main()"]
FAST = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "eval.baseline=false"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    slurm = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    yield slurm
    slurm.stop()


def prune(cluster: LocalSlurm, *args: str, cwd: Path, timeout: float = 300, wait: bool = True):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **cluster.env)
    command = [*PRUNE, "run", "-m", *args]
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def records(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))}


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_a_four_job_sweep_runs_as_one_array_and_a_rerun_skips_all(cluster, tmp_path, corpus):
    args = [*tiny_args(corpus), *FAST, "method=magnitude", "sparsity=0.2,0.3,0.4,0.5", "hydra.sweep.dir=outputs/sweeps/four"]
    first = prune(cluster, *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "submitted 4 job(s) as SLURM array" in first.stdout and "4 completed, 0 skipped, 0 failed" in first.stdout
    report = subprocess.run([*PRUNE, "report", "outputs"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0 and "4 completed run(s)" in report.stdout
    again = prune(cluster, *args, cwd=tmp_path)
    assert again.returncode == 0 and "0 completed, 4 skipped, 0 failed" in again.stdout, again.stdout
    assert cluster.jobs() == [""], "the cluster still holds jobs"


def test_the_default_launcher_settings_run_on_a_cpu_node(cluster, tmp_path, corpus):
    result = prune(cluster, *tiny_args(corpus), "hydra/launcher=slurm", "method=magnitude", "eval.baseline=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 completed, 0 skipped, 0 failed" in result.stdout


def test_a_job_over_its_time_limit_fails_with_the_reason_and_the_sweep_ends(cluster, tmp_path, corpus):
    sweep = tmp_path / "outputs/sweeps/limit"
    result = prune(cluster, *tiny_args(corpus), *FAST, "hydra.launcher.timeout_min=1", "method=wanda", "data.nsamples=400000",
                   f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=400)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "0 completed, 0 skipped, 1 failed" in result.stdout and "time limit" in result.stdout
    (record,) = records(sweep).values()
    assert record["status"] == "failed" and record["slurm_state"] == "timeout"


@pytest.mark.parametrize("overrides, message", [
    (["hydra.launcher.cpus_per_task=64"], "hydra.launcher.cpus_per_task=64 (x 1 tasks) is more than a node of partition debug has"),
    (["hydra.launcher.mem_gb=100000"], "hydra.launcher.mem_gb=100000 is more than a node of partition debug has"),
    (["hydra.launcher.gpus_per_node=1"], "hydra.launcher.gpus_per_node=1 but a node of partition debug has 0 GPU(s)"),
    (["hydra.launcher.partition=nope"], "unknown SLURM partition 'nope'"),
    (["+hydra.launcher.additional_parameters.gres=fpga:1"], "SLURM refused the sweep: Invalid generic resource (gres) specification"),
])
def test_a_request_the_cluster_cannot_serve_is_one_line(cluster, tmp_path, corpus, overrides, message):
    result = prune(cluster, *tiny_args(corpus), "hydra/launcher=slurm", *overrides, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("prune: error:") and message in lines[0], result.stderr
    assert cluster.jobs() == [""]


@pytest.fixture(params=["no-accounting", "accounting"])
def either_cluster(request, tmp_path_factory):
    """The module's cluster (no accounting: submitit's sacct polling would hang), or a second one
    with slurmdbd + MariaDB (started for the test alone, so the two never share the node)."""
    if request.param == "no-accounting":
        yield request.getfixturevalue("cluster")
        return
    reason = unavailable(accounting=True)
    if reason:
        pytest.skip(reason)
    request.getfixturevalue("cluster").stop()  # one cluster on the node at a time (these tests come last)
    slurm = LocalSlurm(tmp_path_factory.mktemp("slurm-accounting"), accounting=True).start()
    yield slurm
    slurm.stop()


def test_scancel_of_one_task_fails_it_with_the_reason_and_the_rerun_finishes_it(either_cluster, tmp_path, corpus):
    cluster = either_cluster
    sweep = tmp_path / "outputs/sweeps/cancel"
    args = [*tiny_args(corpus), *FAST, "method=wanda", "data.nsamples=10000", "sparsity=0.2,0.3,0.4,0.5", f"hydra.sweep.dir={sweep}"]
    process = prune(cluster, *args, cwd=tmp_path, wait=False)
    logs = lambda: [p for p in sweep.glob("*/prune.log") if "stage prune ..." in p.read_text()]  # noqa: E731
    wait_for(lambda: logs(), 240, "a job to start pruning")
    running = cluster.run("squeue", "-h", "-r", "-t", "RUNNING", "-o", "%i").stdout.split()
    assert running, "no running job to cancel"
    cluster.run("scancel", running[0])
    out, err = process.communicate(timeout=400)
    assert process.returncode == 1, err[-3000:]
    assert "3 completed, 0 skipped, 1 failed" in out, out
    assert f"SLURM job {running[0]}: cancelled (scancel)" in out and "Traceback" not in out + err
    failed = [r for r in records(sweep).values() if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["slurm_state"] == "cancelled"
    rerun = prune(cluster, *args, cwd=tmp_path, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "1 completed, 3 skipped, 0 failed" in rerun.stdout, rerun.stdout
    final = records(sweep)
    assert len(final) == 4 and all(r["status"] == "completed" for r in final.values())  # 0 lost
    for log in sweep.glob("*/prune.log"):  # 0 duplicated: each job pruned to the end exactly once
        assert log.read_text().count("stage prune done") == 1, log
