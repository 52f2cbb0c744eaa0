"""The `prune` command: bad input gives one line and a non-zero exit, sweeps and reports work."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import run_prune

TINY = ["model=tiny_llama", "benchmark.repeats=2", "benchmark.warmup=1", "benchmark.seqlen=16", "data.seqlen=32", "data.max_eval_tokens=256"]


def tiny_args(corpus: Path) -> list[str]:
    return [*TINY, "data/eval=text_file", f"data.eval.path={corpus}", "data/calibration=text_file", f"data.calibration.path={corpus}"]


def run_dirs(cwd: Path) -> list[Path]:
    return sorted(p for p in (cwd / "outputs").glob("*/*") if p.is_dir())


def assert_clean_failure(result, cwd: Path, message: str):
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("prune: error:") and message in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert run_dirs(cwd) == [], "a failed run left a run directory behind"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method=nope"], "unknown method 'nope' (choose from: dense, magnitude"),
        (["model=gpt5"], "unknown model 'gpt5' (choose from:"),
        (["data/eval=imagenet"], "unknown data/eval 'imagenet'"),
        (["sparsity=1.0"], "sparsity must be a number in [0, 1)"),
        (["sparsity=-0.1"], "sparsity must be a number in [0, 1)"),
        (["pattern=2:4", "sparsity=0.7"], "pattern 2:4 means sparsity 0.5"),
        (["model=hf", "model.name_or_path=./no/such/folder"], "does not exist"),
        (["data.seqlen=4096"], "longer than the context"),
        (["data.max_eval_tokens=16", "data.seqlen=32"], "shorter than one window"),
    ],
)
def test_bad_input_one_line_nonzero_exit_no_run_dir(tmp_path, corpus, overrides, message):
    result = run_prune("run", *tiny_args(corpus), *overrides, cwd=tmp_path)
    assert_clean_failure(result, tmp_path, message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here, so asking for it is not an error")
def test_cuda_requested_without_cuda(tmp_path, corpus):
    result = run_prune("run", *tiny_args(corpus), "model.device=cuda", cwd=tmp_path)
    assert_clean_failure(result, tmp_path, "CUDA is not available")


def test_unknown_command_and_version(tmp_path):
    assert run_prune("frobnicate", cwd=tmp_path).returncode == 2
    version = run_prune("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("prune ")


def test_single_run_writes_all_outputs(tmp_path, corpus):
    result = run_prune("run", *tiny_args(corpus), "method=magnitude", "sparsity=0.5", "save_model=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    assert {"metrics.json", "results.csv", "layers.csv", "prune.log", ".hydra", "model"} <= {p.name for p in run_dir.iterdir()}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["sparsity_actual"] == pytest.approx(0.5)
    for key in ["run_id", "model", "method", "pattern", "sparsity_target", "params_total", "params_nonzero", "ppl", "prune_s", "eval_s"]:
        assert key in metrics, key
    assert metrics["ppl"] > 1 and metrics["ppl_dense"] > 1
    layers = pd.read_csv(run_dir / "layers.csv")
    assert list(layers.columns) == ["name", "shape", "numel", "zeros", "sparsity"]
    assert (layers["zeros"] == layers["numel"] // 2).all()
    assert (run_dir / "model" / "model.safetensors").exists()
    # The saved model reloads through model=hf with the same sparsity.
    again = run_prune("run", *tiny_args(corpus), "model=hf", f"model.name_or_path={run_dir / 'model'}", "method=dense", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    reloaded = json.loads((run_dirs(tmp_path)[-1] / "metrics.json").read_text())
    assert reloaded["sparsity_actual"] == pytest.approx(0.5)
    assert reloaded["ppl"] == pytest.approx(metrics["ppl"], rel=1e-5)


def test_multirun_then_report_shows_every_row(tmp_path, corpus):
    result = run_prune("run", "-m", *tiny_args(corpus), "method=dense,magnitude", "sparsity=0.5", "eval.baseline=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = run_prune("report", "outputs", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    frame = pd.read_csv(tmp_path / "outputs" / "report.csv")
    assert sorted(frame["method"]) == ["dense", "magnitude"]
    assert (frame["status"] == "completed").all()
    assert "magnitude" in (tmp_path / "outputs" / "report.md").read_text()
    bad = run_prune("report", "outputs", "--columns", "method,nonsense", cwd=tmp_path)
    assert bad.returncode == 2 and "nonsense" in bad.stderr


def test_sweep_with_an_invalid_value_runs_the_others_and_exits_nonzero(tmp_path, corpus):
    result = run_prune("run", "-m", *tiny_args(corpus), "method=magnitude", "sparsity=0.5,1.5", "eval.baseline=false", cwd=tmp_path)
    assert result.returncode == 1
    records = [json.loads(p.read_text()) for p in (tmp_path / "outputs").rglob("metrics.json")]
    assert sorted(r["status"] for r in records) == ["completed", "failed"]
    failed = next(r for r in records if r["status"] == "failed")
    assert "sparsity must be a number in [0, 1)" in failed["error"]
    report = run_prune("report", "outputs", cwd=tmp_path)
    assert report.returncode == 0 and "1 failed run" in report.stdout
