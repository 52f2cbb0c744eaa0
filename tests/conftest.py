"""Shared fixtures: tiny random models built from configs, and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from prunecli.methods import METHODS, PruneContext
from prunecli.methods.targets import select_layers
from prunecli.models.tiny import build_tiny

REPO = Path(__file__).resolve().parents[1]
# Every run evaluates its own dense baseline (in-process runs and the CLI alike): tests that compare
# figures across runs must compare computed ones; tests of the cache set baseline_cache themselves.
os.environ["PRUNECLI_BASELINE_CACHE"] = "null"
PROTOCOL = REPO.parent / "shared" / "protocol"

TINY_CONFIGS = {
    "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=97, max_position_embeddings=256),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, vocab_size=97, n_positions=256),
    "opt": dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=97,
                max_position_embeddings=256, word_embed_proj_dim=64),
    "bert": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=97,
                 max_position_embeddings=256),
}


def tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    model, _ = build_tiny(arch, dict(TINY_CONFIGS[arch]), seed)
    return model.eval()


@pytest.fixture(params=sorted(TINY_CONFIGS))
def any_tiny_model(request):
    return request.param, tiny_model(request.param)


def run_prune(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the ``prune`` console script in ``cwd`` (outputs/ lands there)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    command = [sys.executable, "-c", "from prunecli.cli import main; main()", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A small local .txt corpus, long enough for a few windows of 32 tiny-model tokens."""
    text = "\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog near river {i}." for i in range(200))
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


def tiny_cli_args(corpus):
    """Overrides for a quick CLI run: the tiny Llama, calibrated and evaluated on the test corpus, no benchmark."""
    return ["model=tiny_llama", "benchmark=none", "data.seqlen=32", "data.max_eval_tokens=256", "data.nsamples=4",
            "data/eval=text_file", f"data.eval.path={corpus}", "data/calibration=text_file", f"data.calibration.path={corpus}"]


def finished_run(result, cwd):
    """The one run folder a successful ``prune run`` left under ``cwd``, and its metrics."""
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(cwd)
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


def composition_error(*overrides: str) -> str:
    """The one line ``pipeline.validate`` refuses the composed run config with."""
    from hydra import compose, initialize_config_dir

    from prunecli.errors import PruneError
    from prunecli.pipeline import validate

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("run", overrides=list(overrides))
    with pytest.raises(PruneError) as err:
        validate(cfg)
    return str(err.value)


# the CLI's tiny runs and their failures
TINY = ["model=tiny_llama", "benchmark.repeats=2", "benchmark.warmup=1", "benchmark.seqlen=16", "data.seqlen=32", "data.max_eval_tokens=256"]


def tiny_args(corpus: Path) -> list[str]:
    """Overrides for a quick CLI run with a quick benchmark: the tiny Llama, calibrated and evaluated on the test corpus."""
    return [*TINY, "data/eval=text_file", f"data.eval.path={corpus}", "data/calibration=text_file", f"data.calibration.path={corpus}"]


def run_dirs(cwd: Path) -> list[Path]:
    """The run folders under ``cwd/outputs``."""
    return sorted(p for p in (cwd / "outputs").glob("*/*") if p.is_dir())


def assert_clean_failure(result, cwd: Path, message: str):
    """``prune`` failed with one line on stderr, ``prune: error: ...message...``, no traceback and no run folder left."""
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("prune: error:") and message in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert run_dirs(cwd) == [], "a failed run left a run directory behind"


# a layer-wise method's context on a tiny model, in process
IGNORE = ["lm_head", "embed", "wte", "wpe", "pooler"]


def context(model, method, windows, sparsity=0.5, nm=None, **options):
    """A :class:`PruneContext` for ``method`` on every linear layer of ``model`` but the embeddings and heads, on CPU,
    calibrated on ``windows`` in one batch."""
    layers = select_layers(model, "all", IGNORE)
    opts = OmegaConf.create({"name": method, "calibration_batch_size": len(windows), **options})
    return PruneContext(model, layers, sparsity, nm, opts, torch.device("cpu"), calibration=windows)


def covered_in_wanda_passes(monkeypatch, kernels) -> tuple[list[bool], torch.nn.Module]:
    """Wanda's block passes on a tiny Llama (2 blocks, 4 windows of 16 tokens, one batch), with every
    ``kernels.covered`` verdict recorded: the verdicts and the pruned model."""
    covered = []
    original = kernels.covered
    monkeypatch.setattr(kernels, "covered", lambda *args: covered.append(original(*args)) or covered[-1])
    model = tiny_model("llama")
    windows = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(3))
    METHODS.get("wanda").prune(context(model, "wanda", windows))
    return covered, model
