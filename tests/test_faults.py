"""Faults and bad input never lose a user's files: refused runs, signals, stopped sweeps, locks,
unreadable results, read-only folders."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunecli import rundir
from prunecli.methods.sparsegpt import inverse_hessian_factor
from tests.conftest import assert_clean_failure, run_dirs, run_prune, tiny_args

PRUNE = [sys.executable, "-c", "from prunecli.cli import main; main()"]


def tree(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` -> the sha256 of its bytes."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def folders(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_dir()}


def wait_for(predicate, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def log_has(path: Path, text: str, count: int = 1) -> bool:
    return path.exists() and path.read_text().count(text) >= count


# -- 1: a refused run removes only what it added ---------------------------------------------------

def test_bad_input_into_an_existing_folder_keeps_every_file(tmp_path, corpus):
    work = tmp_path / "work"
    (work / "chapters").mkdir(parents=True)
    (work / "thesis.tex").write_text("\\chapter{Pruning}\n")
    (work / "chapters" / "one.tex").write_text("one\n")
    (work / "notes.log").write_text("my own log\n")
    before = tree(work)
    for bad in (["sparsity=1.5"], ["data.max_eval_tokens=16"], ["data.seqlen=5000"]):  # refused before / after loading
        result = run_prune("run", *tiny_args(corpus), *bad, "hydra.run.dir=.", cwd=work)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        assert tree(work) == before, f"{bad} changed the folder it was pointed at"
        assert not (work / ".hydra").exists() and not (work / "prune.log").exists()


def test_a_finished_run_survives_bad_and_good_reruns_into_its_folder(tmp_path, corpus):
    args = [*tiny_args(corpus), "method=magnitude", "eval.baseline=false", "hydra.run.dir=outputs/runs/finished"]
    assert run_prune("run", *args, cwd=tmp_path).returncode == 0
    finished = tmp_path / "outputs/runs/finished"
    before = tree(finished)
    bad = run_prune("run", *args, "data.seqlen=5000", cwd=tmp_path)
    assert bad.returncode == 2 and tree(finished) == before
    good = run_prune("run", *args, "sparsity=0.3", cwd=tmp_path)  # would overwrite the finished run's results
    assert good.returncode == 2 and good.stderr.startswith("prune: error:") and "already holds a finished run" in good.stderr
    assert len(good.stderr.strip().splitlines()) == 1
    assert tree(finished) == before


@settings(max_examples=30, deadline=None)
@given(before=st.sets(st.sampled_from(["a.txt", "d/b.txt", "d/e/c.txt", ".hydra/config.yaml", "prune.log"]), max_size=5),
       added=st.sets(st.sampled_from(["x.txt", "d/y.txt", "new/z.txt", ".hydra/hydra.yaml", ".hydra/config.yaml", "prune.log"]), max_size=6))
def test_discard_new_restores_exactly_what_was_there(tmp_path_factory, before, added):
    folder = tmp_path_factory.mktemp("run")
    for name in before:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"old {name}\n")
    expected, expected_folders = tree(folder), folders(folder)
    rundir.SNAPSHOTS[folder.resolve()] = rundir.Snapshot.take(folder)
    for name in added:  # what a run writes: new files, rewritten .hydra files, appended logs
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        with open(folder / name, "a") as handle:
            handle.write(f"new {name}\n")
    rundir.discard_new(folder)
    assert tree(folder) == expected and folders(folder) == expected_folders


def test_a_run_that_created_its_folder_removes_it_whole(tmp_path):
    folder = tmp_path / "fresh"
    rundir.SNAPSHOTS[folder.resolve()] = rundir.Snapshot.take(folder)
    (folder / ".hydra").mkdir(parents=True)
    (folder / "prune.log").write_text("x")
    rundir.discard_new(folder)
    assert not folder.exists()


# -- 2: an interrupted run is marked ---------------------------------------------------------------

@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_prune_records_status_interrupted(tmp_path, corpus, sig, code):
    run = tmp_path / "outputs/runs/slow"
    command = [*PRUNE, "run", *tiny_args(corpus), "method=sparsegpt", "data.nsamples=20000", "eval.baseline=false", f"hydra.run.dir={run}"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: log_has(run / "prune.log", "stage prune ..."), what="the prune stage")
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "interrupted"
    assert metrics["interrupted_signal"] == signal.Signals(sig).name and metrics["interrupted_stage"] == "prune"
    assert f"interrupted by {signal.Signals(sig).name} during stage prune" in err and "Traceback" not in out + err
    report = run_prune("report", "outputs", cwd=tmp_path)
    assert report.returncode == 0 and "1 interrupted run" in report.stdout


# -- 3: a stopped sweep stops its workers; one process per job folder -----------------------------

def processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace") and int(cmdline.parent.name) != os.getpid():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def test_a_killed_local_parallel_sweep_leaves_no_worker_and_reruns_each_job_once(tmp_path, corpus):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the slurm extra (hydra-submitit-launcher)")
    sweep = tmp_path / "outputs/sweeps/stopped"
    command = [*PRUNE, "run", "-m", *tiny_args(corpus), "hydra/launcher=local_parallel", f"hydra.sweep.dir={sweep}",
               "method=wanda", "sparsity=0.3,0.5", "data.nsamples=8000", "eval.baseline=false"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len([p for p in sweep.glob("*/prune.log") if log_has(p, "stage prune ...")]) == 2, what="both jobs pruning")
    assert processes_mentioning(str(sweep)), "the workers should be running"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "sweep interrupted by SIGTERM" in err
    assert processes_mentioning(str(sweep)) == [], "a worker outlived the stopped sweep"
    assert sorted(json.loads(p.read_text())["status"] for p in sweep.glob("*/metrics.json")) == ["interrupted"] * 2
    rerun = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "2 completed, 0 skipped, 0 failed" in rerun.stdout
    for log in sweep.glob("*/prune.log"):  # one interrupted attempt, then exactly one full run
        text = log.read_text()
        assert text.count("stage load ...") == 2 and text.count("stage prune done") == 1, text


def test_a_locked_folder_is_refused_and_left_alone(tmp_path, corpus):
    folder = tmp_path / "outputs/runs/busy"
    folder.mkdir(parents=True)
    rundir.lock(folder)  # as a running prune process holds it
    try:
        before = tree(folder)
        result = run_prune("run", *tiny_args(corpus), f"hydra.run.dir={folder}", cwd=tmp_path)
        assert result.returncode == 2 and f"another prune process (pid {os.getpid()}) is running in {folder}" in result.stderr
        assert tree(folder) == before
    finally:
        rundir.unlock(folder)


def test_a_locked_sweep_job_is_refused_and_its_folder_left_alone(tmp_path, corpus):
    args = ["run", "-m", *tiny_args(corpus), "method=magnitude", "eval.baseline=false", "resume=false", "hydra.sweep.dir=outputs/sweeps/fixed"]
    assert run_prune(*args, cwd=tmp_path).returncode == 0
    (job,) = (tmp_path / "outputs/sweeps/fixed").glob("0_*")
    rundir.lock(job)
    results = tree(job)
    try:
        again = run_prune(*args, cwd=tmp_path)  # resume off: it would run the job again into its folder
        assert "another prune process" in again.stderr
        assert {k: v for k, v in tree(job).items() if not k.startswith(".hydra")} == {k: v for k, v in results.items() if not k.startswith(".hydra")}
    finally:
        rundir.unlock(job)


def test_sweep_summary_counts_jobs_found_finished_as_skipped(tmp_path, corpus):
    args = ["run", "-m", *tiny_args(corpus), "method=magnitude", "sparsity=0.3,0.5", "eval.baseline=false", "hydra.sweep.dir=outputs/sweeps/fixed"]
    first = run_prune(*args, cwd=tmp_path)
    assert "2 completed, 0 skipped, 0 failed" in first.stdout, first.stdout
    again = run_prune(*args, cwd=tmp_path)
    assert again.returncode == 0 and "0 completed, 2 skipped, 0 failed" in again.stdout, again.stdout


# -- 4: prune report survives unreadable files -----------------------------------------------------

def test_report_lists_unreadable_results_and_reports_the_rest(tmp_path, corpus):
    assert run_prune("run", *tiny_args(corpus), "method=magnitude", "eval.baseline=false", cwd=tmp_path).returncode == 0
    broken = {
        "empty": b"",
        "binary": bytes(range(256)) * 4,
        "unterminated": b'run_id,status,model,method\nabc,completed,"tiny,magnitude\n',
        "truncated_header": b"run_id,sta",
    }
    for name, content in broken.items():
        (tmp_path / "outputs" / name).mkdir(parents=True)
        (tmp_path / "outputs" / name / "results.csv").write_bytes(content)
    report = run_prune("report", "outputs", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "1 completed run" in report.stdout
    for name in broken:
        line = next((l for l in report.stdout.splitlines() if f"outputs/{name}/results.csv" in l), None)
        assert line is not None and line.startswith("skipped unreadable") and ": " in line, report.stdout


def test_report_with_only_unreadable_results_is_one_line(tmp_path):
    (tmp_path / "outputs" / "x").mkdir(parents=True)
    (tmp_path / "outputs" / "x" / "results.csv").write_bytes(b"")
    report = run_prune("report", "outputs", cwd=tmp_path)
    assert report.returncode == 2 and "could be read" in report.stderr


# -- 5: read-only output folder ----------------------------------------------------------------

@pytest.fixture
def read_only_dir(tmp_path):
    folder = tmp_path / "readonly"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes through chmod: mount the folder read-only instead
        if subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a read-only folder here (root, and mount --bind -o ro is refused)")
        yield folder
        subprocess.run(["umount", str(folder)], capture_output=True)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


def test_read_only_output_folder_is_one_line(tmp_path, corpus, read_only_dir):
    for args in (["hydra.run.dir=" + str(read_only_dir / "run")], ["-m", "hydra.sweep.dir=" + str(read_only_dir / "sweep")]):
        result = run_prune("run", *args, *tiny_args(corpus), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("prune: error: cannot write the run directory"), result.stderr
        assert "Traceback" not in result.stdout + result.stderr


# -- 7: SparseGPT damping retries from a positive floor ---------------------------------------------

def test_undamped_singular_hessian_retries_from_a_positive_floor():
    x = torch.randn(64, 3)
    hessian = x.T @ x
    hessian = torch.block_diag(hessian, hessian)  # rank 3 of 6, nonzero diagonal
    hessian[0, 1] = hessian[1, 0] = hessian[0, 0] * 2  # indefinite
    warnings: list = []
    upper = inverse_hessian_factor(hessian, 0.0, "layer", warnings)
    assert torch.isfinite(upper).all()
    assert warnings and warnings[0]["percdamp"] == pytest.approx(0.01)
    assert all(b["percdamp"] == pytest.approx(a["percdamp"] * 10) for a, b in zip(warnings, warnings[1:]))


# -- 9: files follow the umask; load-time errors are bad input --------------------------------------

def test_output_files_follow_the_umask(tmp_path, corpus):
    command = [*PRUNE, "run", *tiny_args(corpus), "method=magnitude", "eval.baseline=false"]
    old = os.umask(0o022)
    try:
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(tmp_path)
    for name in ("metrics.json", "results.csv", "layers.csv"):
        assert (run / name).stat().st_mode & 0o777 == 0o644, name


def test_load_time_errors_leave_no_run_directory(tmp_path, corpus):
    from transformers import AutoTokenizer

    from prunecli.models.packaged import minilm_folder
    from prunecli.models.tiny import build_tiny
    from tests.conftest import TINY_CONFIGS

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()))
    model, _ = build_tiny("llama", TINY_CONFIGS["llama"] | {"vocab_size": len(tokenizer)})
    folder = tmp_path / "broken"
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    args = [*tiny_args(corpus), "model=hf", f"model.name_or_path={folder}"]
    assert run_prune("run", *args, "eval.baseline=false", cwd=tmp_path).returncode == 0  # loads when intact
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    assert_clean_failure(run_prune("run", *args, cwd=elsewhere), elsewhere, "cannot load model")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"model_type": "no_such_family"}))
    assert_clean_failure(run_prune("run", *args, cwd=elsewhere), elsewhere, "cannot load model")
