"""Sweeps: submitit local launcher, resume by run id, failure isolation, kill and re-run."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_prune, tiny_args

SWEEP = ["method=magnitude,wanda", "sparsity=0.3,0.5", "data.nsamples=2", "eval.baseline=false"]


def records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("metrics.json"))]


def statuses(root: Path) -> list[str]:
    return sorted(r["status"] for r in records(root))


def test_local_parallel_launcher_resume_and_report(tmp_path, corpus):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the slurm extra (hydra-submitit-launcher)")
    args = ["run", "-m", *tiny_args(corpus), *SWEEP, "hydra/launcher=local_parallel"]
    first = run_prune(*args, "hydra.sweep.dir=outputs/sweeps/first", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert statuses(tmp_path / "outputs/sweeps/first") == ["completed"] * 4
    assert "4 completed, 0 skipped, 0 failed" in first.stdout
    again = run_prune(*args, "hydra.sweep.dir=outputs/sweeps/again", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert statuses(tmp_path / "outputs/sweeps/again") == ["skipped"] * 4
    assert "0 completed, 4 skipped, 0 failed" in again.stdout
    report = run_prune("report", "outputs", "--pivot", "rows=method,cols=sparsity_target,values=ppl", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "4 completed run" in report.stdout


def test_resume_is_off_for_single_runs_and_can_be_forced_off_in_sweeps(tmp_path, corpus):
    base = ["run", *tiny_args(corpus), "method=magnitude", "eval.baseline=false"]
    assert run_prune(*base, cwd=tmp_path).returncode == 0
    assert run_prune(*base, cwd=tmp_path).returncode == 0
    assert statuses(tmp_path / "outputs") == ["completed", "completed"]
    swept = run_prune("run", "-m", *base[1:], "resume=false", cwd=tmp_path)
    assert swept.returncode == 0 and statuses(tmp_path / "outputs") == ["completed"] * 3
    skipped = run_prune("run", "-m", *base[1:], cwd=tmp_path)
    assert skipped.returncode == 0 and statuses(tmp_path / "outputs").count("skipped") == 1


def test_killed_sweep_rerun_finishes_only_the_missing_jobs(tmp_path, corpus):
    command = [sys.executable, "-c", "from prunecli.cli import main; main()", "run", "-m", *tiny_args(corpus),
               "method=magnitude", "sparsity=0.1,0.2,0.3,0.4,0.5,0.6", "eval.baseline=false", "benchmark.repeats=40"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and statuses(tmp_path / "outputs").count("completed") < 2:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    done = statuses(tmp_path / "outputs").count("completed")
    assert 2 <= done < 6, "the sweep should have been killed part-way"
    for record in records(tmp_path / "outputs"):  # nothing claims completed without its files
        run_dir = Path(record["run_dir"])
        assert record["status"] != "completed" or {"results.csv", "layers.csv"} <= {p.name for p in run_dir.iterdir()}
    rerun = subprocess.run(command[:-1] + ["benchmark.repeats=40"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{6 - done} completed, {done} skipped, 0 failed" in rerun.stdout


def test_rerun_into_the_same_sweep_dir_never_overwrites_a_finished_job(tmp_path, corpus):
    base = ["run", "-m", *tiny_args(corpus), "method=magnitude", "sparsity=0.3,0.5", "eval.baseline=false", "hydra.sweep.dir=outputs/sweeps/fixed"]
    sweep = tmp_path / "outputs/sweeps/fixed"
    assert run_prune(*base, cwd=tmp_path).returncode == 0
    first = {p.parent.name: p.read_text() for p in sweep.rglob("metrics.json")}
    assert len(first) == 2 and all('"completed"' in text for text in first.values())
    again = run_prune(*base, cwd=tmp_path)  # the same jobs: each finds its own finished folder
    assert again.returncode == 0 and again.stdout.count("already completed here") == 2
    assert {p.parent.name: p.read_text() for p in sweep.rglob("metrics.json")} == first  # untouched
    other = run_prune(*base, "method.scope=global", cwd=tmp_path)  # same job numbers, method and sparsities, other settings
    assert other.returncode == 0, other.stderr[-2000:]
    after = {p.parent.name: p.read_text() for p in sweep.rglob("metrics.json")}
    assert len(after) == 4 and all(after[name] == text for name, text in first.items())


@pytest.mark.parametrize("launcher", ["basic", "local_parallel"])
def test_a_sweep_of_four_jobs_evaluates_the_dense_baseline_once(tmp_path, corpus, launcher):
    if launcher == "local_parallel":  # jobs at once: the first computes, the others wait on its lock
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the slurm extra (hydra-submitit-launcher)")
    cache = tmp_path / "baselines"
    chosen = [] if launcher == "basic" else [f"hydra/launcher={launcher}"]  # basic: Hydra's default, one job after another
    result = run_prune("run", "-m", *tiny_args(corpus), *SWEEP[:-1], f"baseline_cache={cache}", *chosen,
                       "hydra.sweep.dir=outputs/sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = [path.read_text() for path in sorted((tmp_path / "outputs/sweep").rglob("prune.log"))]
    assert len(logs) == 4
    assert sum(log.count("dense baseline evaluated") for log in logs) == 1
    assert sum(log.count(f"dense baseline read from the cache in {cache}") for log in logs) == 3
    runs = records(tmp_path / "outputs/sweep")
    assert sorted(r["baseline_cached"] for r in runs) == [False, True, True, True]
    assert len({r["ppl_dense"] for r in runs}) == 1 and len(list(cache.glob("*.json"))) == 1
    other = run_prune("run", *tiny_args(corpus), "method=magnitude", "data.max_eval_tokens=128", f"baseline_cache={cache}", cwd=tmp_path)
    assert other.returncode == 0 and len(list(cache.glob("*.json"))) == 2  # another eval budget: another baseline
