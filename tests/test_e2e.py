"""End to end on the real packaged SmolLM2 (small budgets): `prune run` and its files."""

import json

import pandas as pd
import pytest

from prunecli.methods.masks import prune_count
from tests.conftest import run_prune

pytestmark = pytest.mark.e2e

SMALL = ["data.seqlen=256", "data.max_eval_tokens=1024", "benchmark.repeats=3", "benchmark.warmup=1"]


def test_default_model_magnitude_run(tmp_path):
    result = run_prune("run", "method=magnitude", "sparsity=0.5", *SMALL, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = [p for p in (tmp_path / "outputs" / "runs").iterdir()]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["model"] == "smollm2_135m"
    assert metrics["params_total"] == 134_515_008
    # Dense SmolLM2 is a decent LM on Wikipedia; 50% magnitude pruning hurts it a lot.
    assert 8 < metrics["ppl_dense"] < 40
    assert metrics["ppl"] > 2 * metrics["ppl_dense"]
    # Exactly half of every matrix, despite the many equal magnitudes of 4-bit-derived weights.
    layers = pd.read_csv(run_dir / "layers.csv")
    assert len(layers) == 30 * 7
    assert (layers["zeros"] == layers["numel"].map(lambda n: prune_count(n, 0.5))).all()
    assert metrics["prefill_ms"] > 0 and metrics["environment"]["torch"]
    row = pd.read_csv(run_dir / "results.csv").iloc[0]
    assert row["status"] == "completed" and row["ppl"] == pytest.approx(metrics["ppl"])


REFERENCE_MATMUL_GFLOPS = 327.0  # the project's 2-core Intel VM (experiments/oneshot_llm/README.md, floor_s)


def test_default_zeroshot_wanda_run_prints_the_task_table_within_five_minutes(tmp_path):
    """The issue's command as a user types it: Wanda 50%, the seven packaged tasks, the dense baseline."""
    pytest.importorskip("lm_eval", reason="eval=zeroshot needs lm-evaluation-harness (pip install 'prunecli[zeroshot]')")
    result = run_prune("run", "method=wanda", "sparsity=0.5", "eval=zeroshot", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "zero-shot accuracy (lm-evaluation-harness)" in result.stdout
    (run_dir,) = [p for p in (tmp_path / "outputs" / "runs").iterdir()]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    tasks = ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]
    assert list(metrics["zeroshot"]) == tasks and all(row["examples"] == 40 for row in metrics["zeroshot"].values())
    for task in tasks:  # each task row appears in the printed table
        assert any(line.lstrip("│ ").startswith(task) for line in result.stdout.splitlines()), task
    assert 0.3 < metrics["zeroshot_mean_dense"] < 0.6 and metrics["zeroshot_mean"] > 0.25
    # five minutes on the 2-core Intel VM the issue was set on (fp32 matmuls at 327-358 GFLOP/s there); a slower machine
    # gets the time its own measured matmul rate (the run's floor) implies -- a 2-core AMD EPYC VM here ran it in 307 s
    slower = max(1.0, REFERENCE_MATMUL_GFLOPS / metrics["floor"]["matmul_gflops"])
    assert metrics["total_s"] < 300 * slower, (f"the default zero-shot Wanda run took {metrics['total_s']:.0f} s, over 300 s x {slower:.2f} "
                                               f"(this machine's matmul rate {metrics['floor']['matmul_gflops']} GFLOP/s; stages: {metrics['timings']})")


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_smollm2_pruned_with_disk_offload_scores_the_same_to_the_bit(tmp_path, method):
    """#17: the weights read block by block from safetensors, one block in memory, the same figures."""
    figures = {}
    for mode in ("none", "disk"):
        cwd = tmp_path / mode
        cwd.mkdir()
        result = run_prune("run", f"method={method}", "sparsity=0.5", "benchmark=none", "data.nsamples=8", "data.seqlen=256",
                           "data.max_eval_tokens=1024", f"model.offload={mode}", cwd=cwd, timeout=900)
        assert result.returncode == 0, result.stderr[-2000:]
        (run_dir,) = [p for p in (cwd / "outputs" / "runs").iterdir()]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        figures[mode] = {key: metrics[key] for key in ("ppl", "ppl_dense", "sparsity_actual", "params_nonzero")}
        assert not (run_dir / "offload").exists()
    assert figures["disk"] == figures["none"]
