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
