"""``model.offload=cpu|disk``: the same numbers as the model held whole, one block resident at a time,
a standard sharded Hugging Face folder saved, and bad input refused in one line."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from prunecli import pipeline
from prunecli.config import config_dir
from prunecli.errors import PruneError
from prunecli.models import layout, offload
from prunecli.models.layout import blocks_of
from prunecli.models.offload import MARKER, DiskOffload, outer_modules
from tests.conftest import finished_run, run_prune, tiny_cli_args

LAYERS = 4


def overrides(corpus: Path, *extra: str) -> list[str]:
    layers = [] if "model=hf" in extra else [f"model.config.{'n_layer' if 'model=tiny_gpt2' in extra else 'num_hidden_layers'}={LAYERS}"]
    return [*tiny_cli_args(corpus), *layers, "eval.baseline=true", *extra]


def run_inprocess(corpus: Path, run_dir: Path, *extra: str) -> tuple[dict, list[dict]]:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("run", overrides=overrides(corpus, *extra))
    prepared = pipeline.prepare(cfg, run_dir)
    return pipeline.execute(prepared, run_dir, [])


def saved_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude"])
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_offloaded_runs_match_the_whole_model_to_the_bit(tmp_path, corpus, method, arch):
    runs = {}
    for mode in ("none", "cpu", "disk"):
        run_dir = tmp_path / mode
        metrics, rows = run_inprocess(corpus, run_dir, f"model={arch}", f"method={method}", f"model.offload={mode}", "save_model=true")
        runs[mode] = metrics, rows, saved_tensors(run_dir / "model")
        assert not (run_dir / "offload").exists() and not (run_dir / "tiny_checkpoint").exists()  # removed when the run ends
    whole, rows, weights = runs["none"]
    for mode in ("cpu", "disk"):
        metrics, mode_rows, mode_weights = runs[mode]
        for key in ("ppl", "ppl_dense", "sparsity_actual", "params_total", "params_nonzero", "params_removed"):
            assert metrics[key] == whole[key], (mode, key)
        assert [(r["name"], r["zeros"]) for r in mode_rows] == [(r["name"], r["zeros"]) for r in rows]
        assert mode_weights.keys() == weights.keys()
        assert all(torch.equal(mode_weights[key], weights[key]) for key in weights), mode
    assert whole["sparsity_actual"] == pytest.approx(0.5)
    assert len(list((tmp_path / "disk" / "model").glob("model-*-of-*.safetensors"))) == 2 + LAYERS - 1  # the outer part + one shard a block


def test_the_saved_shards_reload_with_from_pretrained_and_score_the_same(tmp_path, corpus):
    metrics, _ = run_inprocess(corpus, tmp_path / "pruned", "method=wanda", "model.offload=disk", "save_model=true")
    folder = tmp_path / "pruned" / "model"
    assert json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)  # plain transformers, no prunecli
    assert model.model.layers[0].mlp.down_proj.weight.eq(0).float().mean() == pytest.approx(0.5)
    reloaded, _ = run_inprocess(corpus, tmp_path / "reloaded", "model=hf", f"model.name_or_path={folder}", "method=dense")
    assert reloaded["ppl"] == metrics["ppl"]


def resident_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's weights that are in memory (not meta); the rotary frequencies, computed, always are."""
    return sum(t.numel() * t.element_size() for t in model.parameters() if t.device.type != "meta")


def part_bytes(modules: list[torch.nn.Module]) -> int:
    tensors = {id(t): t for module in modules for t in module.parameters()}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def test_disk_offload_holds_one_part_of_the_model_at_a_time(tmp_path, corpus, monkeypatch):
    """While any part is onloaded, the model's real tensors are exactly that part: one block, or the
    embeddings with the final norm and head; never two blocks, never the whole model."""
    seen: list[tuple[str, int, int]] = []
    original = DiskOffload.onloaded

    @contextmanager
    def recording(self, modules, changed=False):
        with original(self, modules, changed):
            _, blocks = blocks_of(self.model)
            kind = "block" if len(modules) == 1 and any(modules[0] is b for b in blocks) else "outer"
            size = {"block": part_bytes([blocks[0]]), "outer": part_bytes(outer_modules(self.model))}[kind]
            seen.append((kind, resident_bytes(self.model), size))
            yield

    monkeypatch.setattr(DiskOffload, "onloaded", recording)
    run_inprocess(corpus, tmp_path / "run", "method=sparsegpt", "model.offload=disk", "model.config.tie_word_embeddings=false")
    assert {kind for kind, _, _ in seen} == {"block", "outer"}
    assert all(resident == size for _, resident, size in seen)
    blocks = sum(size for kind, _, size in seen[:1 + LAYERS] if kind == "block")  # the calibration pass: each block once
    assert max(resident for kind, resident, _ in seen if kind == "block") == blocks / LAYERS  # one block of LAYERS, never more


def cli_error(tmp_path: Path, corpus: Path, *extra: str) -> str:
    result = run_prune("run", *overrides(corpus, "method=wanda", *extra), cwd=tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "error" in line]  # (transformers' save progress bar aside)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert not list((tmp_path / "outputs").glob("*/*/metrics.json"))  # no half-written run
    return lines[0]


def test_bad_offload_folders_are_refused_in_one_line(tmp_path, corpus):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert "not a prunecli offload folder" in cli_error(tmp_path, corpus, "model.offload=disk", f"model.offload_folder={foreign}")
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert "cannot write the offload folder" in cli_error(tmp_path, corpus, "model.offload=disk", "model.offload_folder=/sys/prunecli_offload")


def test_a_killed_runs_leftover_offload_folder_is_cleaned_and_the_rerun_completes(tmp_path, corpus):
    leftover = tmp_path / "offload"
    (leftover / "parts").mkdir(parents=True)
    (leftover / MARKER).write_text("")
    (leftover / "parts" / "model.layers.0.safetensors").write_bytes(b"half-written")
    result = run_prune("run", *overrides(corpus, "method=wanda", "model.offload=disk", f"model.offload_folder={leftover}"), cwd=tmp_path)
    _, metrics = finished_run(result, tmp_path)
    assert metrics["status"] == "completed" and not leftover.exists()


def test_too_little_free_space_is_refused_before_the_run_naming_what_is_needed(tmp_path, monkeypatch):
    monkeypatch.setattr(offload.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(PruneError, match=r"needs 0\.\d\d GiB free in .* 0\.00 GiB are free"):
        offload.prepare_folder(tmp_path / "offload", needed=200 * 1024**2)
    assert not (tmp_path / "offload").exists()


def test_a_model_without_a_known_block_stack_is_named(tmp_path, corpus, monkeypatch):
    monkeypatch.delitem(layout.BLOCK_PATHS, "llama")
    with pytest.raises(PruneError, match="LlamaForCausalLM .* no known block layout"):
        run_inprocess(corpus, tmp_path / "run", "method=wanda", "model.offload=disk")
    assert not (tmp_path / "run" / "offload").exists()


@pytest.mark.parametrize("extra, reason", [
    (["benchmark=quick"], "benchmark=quick times the whole model"),
    (["method=magnitude", "method.scope=global"], "method=magnitude (with these options) reads every layer at once"),
    (["method=ffn"], "method=ffn"),
    (["update=admm"], "update=admm keeps the dense weights"),
    (["finetune=lm"], "finetune=lm trains the whole model"),
])
def test_what_needs_the_whole_model_is_refused_with_offload(tmp_path, corpus, extra, reason):
    from tests.conftest import composition_error

    message = composition_error(*overrides(corpus, "method=wanda", "model.offload=cpu", *extra))
    assert message.startswith("model.offload=cpu keeps only one block on the device") and reason in message
