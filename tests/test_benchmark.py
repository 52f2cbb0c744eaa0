"""Benchmarks: timing rules, FLOPs, backends (outputs match dense), compaction, sizes, tables, bad input."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st
from omegaconf import OmegaConf
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunecli import benchmark
from prunecli.benchmark import BENCHMARKS, BenchmarkContext, backends, flops, layers, sizes, timing
from prunecli.benchmark.backends import BackendSettings, BackendSkipped, SparseLinear, semi_structured_problem
from prunecli.errors import PruneError
from prunecli.methods import METHODS, PruneContext
from prunecli.methods.masks import layerwise_mask
from prunecli.models import LoadedModel
from prunecli.structured.compact import compact
from tests.conftest import REPO, run_prune, tiny_model

CPU = torch.device("cpu")
TOKENS = torch.randint(0, 97, (1, 24), generator=torch.Generator().manual_seed(0))


def settings_for(**overrides) -> BackendSettings:
    return BackendSettings(**{"device": CPU, "dtype": torch.float32, **overrides})


def magnitude_pruned(model: nn.Module, sparsity: float = 0.5) -> nn.Module:
    with torch.no_grad():
        for name, module in model.named_modules():
            if type(module) is nn.Linear and "lm_head" not in name:
                module.weight.masked_fill_(layerwise_mask(module.weight.abs(), sparsity), 0.0)
    return model


def logits_of(model: nn.Module, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens, use_cache=False).logits


def bench_config(name: str = "backends", **overrides):
    config = OmegaConf.load(REPO / "configs" / "benchmark" / f"{name}.yaml")
    small = {"seqlen": 16, "warmup": 1, "repeats": 3, "decode_prompt": 8, "decode_tokens": 3}
    return OmegaConf.merge(config, {key: value for key, value in small.items() if key in config} | overrides)


# -- timing ---------------------------------------------------------------------------------


def test_interleaved_runs_every_call_once_per_round_after_warmup_alternating_the_order():
    order = []
    calls = {name: (lambda name=name: order.append(name) or 0.1) for name in ("a", "b", "c")}
    times = timing.interleaved(calls, warmup=2, repeats=3)
    assert order == ["a", "b", "c"] * 2 + ["a", "b", "c", "c", "b", "a", "a", "b", "c"]  # warm-up, then alternating rounds
    assert times == {name: [0.1] * 3 for name in "abc"}


def test_summary_and_paired_speedup():
    stats = timing.summarize([0.004, 0.001, 0.002, 0.003, 0.010], per=2)
    assert stats["median_ms"] == pytest.approx(1.5) and stats["min_ms"] == pytest.approx(0.5)
    assert stats["p90_ms"] == pytest.approx(5.0) and stats["repeats"] == 5
    # a slow round hits both candidates: the per-round ratio stays 2
    assert timing.paired_speedup([2.0, 20.0, 2.0], [1.0, 10.0, 1.0]) == pytest.approx(2.0)


def test_peak_memory_sees_a_large_allocation_on_cpu():
    with timing.peak_memory(CPU, interval_s=0.0005) as peak:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        block += 1
        import time
        time.sleep(0.05)
    assert peak["peak_bytes"] >= 32 * 2**20
    del block


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA event timing needs a CUDA device (none here)")
def test_cuda_timing_uses_events():
    x = torch.randn(512, 512, device="cuda")
    assert timing.timed(lambda: x @ x, torch.device("cuda")) > 0


# -- FLOPs ----------------------------------------------------------------------------------


def test_linear_flops_dense_and_effective():
    model = nn.Sequential(nn.Linear(8, 6, bias=False), nn.ReLU(), nn.Linear(6, 4, bias=False))
    x = torch.randn(5, 8)
    with torch.no_grad():
        model[0].weight[:, :4] = 0  # half of the first layer
    count = flops.count_flops(model, (x,), {})
    assert count.dense == 2 * 5 * (8 * 6 + 6 * 4)
    assert count.positions == {"0": 5, "2": 5}
    assert count.effective(flops.nonzeros, {"0"}) == 2 * 5 * (4 * 6 + 6 * 4)
    assert count.effective(flops.nonzeros, set()) == count.dense  # layers not converted keep their dense cost


def test_conv_flops_count_positions_of_the_output():
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    count = flops.count_flops(conv, (torch.randn(2, 3, 5, 5),), {})
    assert count.dense == 2 * (2 * 5 * 5) * conv.weight.numel()
    assert count.positions == {"": 2 * 5 * 5}


def test_cpu_attention_is_counted_and_ffn_removal_changes_the_ratio():
    model = tiny_model("llama")
    count = flops.count_flops(model, (), {"input_ids": TOKENS, "use_cache": False})
    linear = sum(2 * count.positions[name] * weight.numel() for name, weight in count.weights.items())
    heads, head_dim, layers_n, s = 4, 16, 2, TOKENS.shape[1]
    attention = layers_n * 2 * (2 * s * s * heads * head_dim)  # QK^T and AV over the full score matrix
    rotary = 2 * s * head_dim // 2  # the rotary angles' outer product: a matmul in some transformers versions
    assert count.dense in (linear + attention, linear + attention + rotary)


@pytest.mark.parametrize("kv_heads", [1, 3, 9])
def test_fused_attention_counts_every_query_head_with_gqa(kv_heads):
    q, k, v = torch.randn(2, 9, 10, 8), torch.randn(2, kv_heads, 12, 8), torch.randn(2, kv_heads, 12, 8)
    assert flops.attention_flops(q, k, v) == 2 * (2 * 2 * 9 * 10 * 12 * 8)  # QK^T + AV, batch 2, 9 query heads
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=flops.ATTENTION_KERNELS) as counter:
        F.scaled_dot_product_attention(q, k, v, enable_gqa=kv_heads != 9)
    assert counter.get_total_flops() == flops.attention_flops(q, k, v)


def test_block_and_24_rules():
    weight = torch.zeros(32, 32)
    weight[0, 0] = 1.0  # one nonzero tile of 16x16
    assert flops.block_nonzeros(16)(weight) == 256
    weight = torch.tensor([[1.0, 0, 2.0, 0, 0, 3.0, 4.0, 0]])
    assert flops.is_24(weight) and flops.half_of_24(weight) == 4
    assert not flops.is_24(torch.ones(1, 8)) and flops.half_of_24(torch.ones(1, 8)) == 8


# -- backends -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["csr", "bsr"])
def test_sparse_backends_give_the_dense_logits(name):
    model = magnitude_pruned(tiny_model("llama"))
    converted = backends.build(name, model, settings_for())
    sparse = [m for m in converted.modules() if isinstance(m, SparseLinear)]
    assert len(sparse) == 14  # 7 Linear layers x 2 blocks; lm_head (no zeros) stays dense
    assert all(m.weight.layout == (torch.sparse_csr if name == "csr" else torch.sparse_bsr) for m in sparse)
    torch.testing.assert_close(logits_of(converted), logits_of(model), atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, SparseLinear) for m in model.modules())  # the pruned model itself is untouched


def test_sparse_backends_skip_a_dense_model_and_bad_blocks():
    with pytest.raises(BackendSkipped, match="no Linear layer has >= 10% zeros"):
        backends.build("csr", tiny_model("llama"), settings_for())
    with pytest.raises(BackendSkipped, match="bsr_block=48 does not divide"):
        backends.build("bsr", magnitude_pruned(tiny_model("llama")), settings_for(bsr_block=48))


@pytest.mark.parametrize("overrides, reason", [
    ({}, "need a CUDA GPU"),
    ({"device": torch.device("cuda"), "capability": (7, 5)}, "compute capability >= 8.0 (this GPU: 7.5)"),
    ({"device": torch.device("cuda"), "capability": (9, 0)}, "fp16 or bf16 weights (model.dtype is float32: set model.dtype=fp16)"),
])
def test_semi_structured_says_why_it_cannot_run(overrides, reason):
    assert reason in semi_structured_problem(settings_for(**overrides))


def test_semi_structured_needs_a_24_pattern_and_runs_where_it_can():
    ready = settings_for(device=torch.device("cuda"), capability=(9, 0), dtype=torch.float16)
    assert semi_structured_problem(ready) is None
    with pytest.raises(BackendSkipped, match="run with pattern=2:4"):  # checked on any machine: no CUDA call is made
        backends.semi_structured(magnitude_pruned(tiny_model("llama")), ready)
    with pytest.raises(BackendSkipped, match="need a CUDA GPU"):
        backends.build("semi_structured", magnitude_pruned(tiny_model("llama")), settings_for())


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                    reason="2:4 semi-structured kernels need a CUDA GPU with compute capability >= 8.0 (none here)")
def test_semi_structured_on_gpu_matches_dense():
    from prunecli.methods.masks import nm_mask

    model = tiny_model("llama").half().cuda()
    with torch.no_grad():
        for module in model.modules():
            if type(module) is nn.Linear and module.out_features != 97:
                module.weight.masked_fill_(nm_mask(module.weight.abs().float(), 2, 4).cuda(), 0)
    ready = BackendSettings(torch.device("cuda"), torch.float16, capability=torch.cuda.get_device_capability())
    converted = backends.build("semi_structured", copy.deepcopy(model), ready)
    torch.testing.assert_close(logits_of(converted, TOKENS.cuda()), logits_of(model, TOKENS.cuda()), atol=2e-2, rtol=2e-2)


def head_masked(arch: str) -> nn.Module:
    model = tiny_model(arch)
    options = OmegaConf.create({"name": "head_mask", "criterion": "l2", "allocation": "per_layer", "gqa": "kv_groups"})
    METHODS.get("head_mask").prune(PruneContext(model, {}, 0.5, None, options, CPU))
    return model


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_structured_backend_removes_zeroed_heads_with_equal_logits(arch):
    masked = head_masked(arch)
    shrunk = backends.build("structured", masked, settings_for())
    assert sum(p.numel() for p in shrunk.parameters()) < sum(p.numel() for p in masked.parameters())
    torch.testing.assert_close(logits_of(shrunk), logits_of(masked), atol=1e-5, rtol=1e-5)


def test_compaction_removes_zeroed_ffn_neurons_and_nothing_else():
    model = tiny_model("llama")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight[:5] = 0
            layer.mlp.up_proj.weight[:5] = 0
            layer.mlp.down_proj.weight[:, :5] = 0
        model.model.layers[0].mlp.gate_proj.weight[5, 1:] = 0  # neuron 5: not entirely zero, stays
    expected = logits_of(model)
    assert compact(model) == {"kv_groups": 0, "query_heads": 0, "ffn": 10}
    assert model.config.intermediate_size == 123
    torch.testing.assert_close(logits_of(model), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(BackendSkipped, match="no head or FFN neuron is entirely zero"):
        backends.build("structured", model, settings_for())


def test_structured_backend_skips_a_cnn_with_the_reason():
    from prunecli.models.cnns import SmallCNN

    with pytest.raises(BackendSkipped, match="filters are removed by method=filters"):
        backends.build("structured", SmallCNN(), settings_for())


# -- sizes ----------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 9), sparsity=st.floats(0, 1), fmt=st.sampled_from(["csr", "bitmask", "dense"]),
       seed=st.integers(0, 2**16))
def test_compressed_files_round_trip_exactly(tmp_path_factory, rows, cols, sparsity, fmt, seed):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator)
    weight[torch.rand(rows, cols, generator=generator) < sparsity] = 0
    state = {"layer.weight": weight, "layer.bias": torch.randn(rows, generator=generator), "conv": torch.zeros(2, 3, 2, 2)}
    path = tmp_path_factory.mktemp("c") / "w.safetensors"
    sizes.save_compressed(state, path, fmt)
    loaded = sizes.load_compressed(path)
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name


def test_bitmask_halves_a_half_sparse_model_and_csr_does_not(tmp_path):
    model = magnitude_pruned(tiny_model("llama"))
    on_disk = sizes.disk_bytes(model, tmp_path, ["dense", "csr", "bitmask"])
    linear = sum(m.weight.numel() for n, m in model.named_modules() if type(m) is nn.Linear and "lm_head" not in n)
    saved = 4 * linear / 2 - linear / 8  # half of the fp32 values gone, one bit each added (less ~200 B of header per layer)
    assert saved - 14 * 300 < on_disk["dense"] - on_disk["bitmask"] < saved
    assert on_disk["bitmask"] < on_disk["csr"] <= on_disk["dense"] + 1024  # CSR cannot shrink 50% fp32: left dense
    assert sizes.worth_encoding(torch.zeros(8, 8), "csr") and not sizes.worth_encoding(torch.ones(8, 8), "bitmask")
    csr = torch.eye(4).to_sparse_csr()
    assert sizes.tensor_bytes(csr) == 5 * 8 + 4 * 8 + 4 * 4  # crow + col (int64) + values (fp32)


# -- the model benchmark ---------------------------------------------------------------------


def run_benchmark(tmp_path: Path, model: nn.Module, unpruned: nn.Module | None, name: str = "backends", **overrides):
    loaded = LoadedModel(model, object(), "tiny", "causal_lm", CPU, torch.float32)
    layers_ = {n: m for n, m in model.named_modules() if type(m) is nn.Linear and "lm_head" not in n}
    metrics = BENCHMARKS.get(name).run(BenchmarkContext(loaded, bench_config(name, **overrides), tmp_path, layers_, unpruned))
    return metrics


def read_rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_backends_table_has_a_row_per_backend_and_phase(tmp_path):
    unpruned = tiny_model("llama")
    model = magnitude_pruned(copy.deepcopy(unpruned))
    metrics = run_benchmark(tmp_path, model, unpruned)
    rows = {(r["backend"], r["phase"]): r for r in read_rows(tmp_path / "latency.csv")}
    names = ["unpruned", "dense", "csr", "bsr", "semi_structured", "structured"]
    assert set(rows) == {(name, phase) for name in names for phase in ("prefill", "decode")}
    assert rows[("semi_structured", "prefill")]["status"].startswith("skipped: 2:4 semi-structured kernels need a CUDA GPU")
    assert rows[("structured", "decode")]["status"].startswith("skipped: no head or FFN neuron")
    for name in ("unpruned", "dense", "csr", "bsr"):
        prefill = rows[(name, "prefill")]
        assert prefill["status"] == "ok" and prefill["reference"] == "unpruned" and float(prefill["median_ms"]) > 0
        assert int(prefill["repeats"]) == 3 and float(rows[(name, "decode")]["median_ms"]) > 0
    assert float(rows[("unpruned", "prefill")]["speedup"]) == 1.0
    assert float(rows[("csr", "prefill")]["max_abs_diff"]) < 1e-4 and rows[("unpruned", "prefill")]["max_abs_diff"] == ""
    assert float(rows[("dense", "prefill")]["theoretical_speedup"]) == 1.0  # zeros on dense kernels: same FLOPs
    assert float(rows[("csr", "prefill")]["theoretical_speedup"]) > 1.0
    assert int(rows[("csr", "prefill")]["sparse_layers"]) == 14
    for key in ("prefill_ms", "decode_ms", "prefill_speedup", "decode_speedup", "flops", "flops_unpruned", "model_mb",
                "disk_mb_dense", "disk_mb_csr", "disk_mb_bitmask"):
        assert metrics[key] > 0, key
    assert metrics["disk_mb_bitmask"] < metrics["disk_mb_dense"]


def test_structured_speedup_reference_is_the_unpruned_model(tmp_path):
    unpruned = tiny_model("llama")
    model = copy.deepcopy(unpruned)
    options = OmegaConf.create({"name": "ffn", "criterion": "l2", "allocation": "per_layer", "calibration_batch_size": 2})
    METHODS.get("ffn").prune(PruneContext(model, {}, 0.5, None, options, CPU))
    metrics = run_benchmark(tmp_path, model, unpruned, backends=["dense"], phases=["prefill"], disk_formats=[])
    rows = {r["backend"]: r for r in read_rows(tmp_path / "latency.csv")}
    assert metrics["flops_ratio"] == pytest.approx(float(rows["dense"]["theoretical_speedup"]))
    assert metrics["flops_ratio"] > 1.0 and metrics["flops"] < metrics["flops_unpruned"]


def test_quick_benchmark_feeds_images_to_an_image_model_and_skips_decode(tmp_path):
    from prunecli.models.cnns import SmallCNN

    loaded = LoadedModel(SmallCNN().eval(), None, "small_cnn", "image_classifier", CPU, torch.float32, (1, 28, 28))
    config = bench_config("backends", backends=["dense", "structured"], phases=["prefill", "decode"], unpruned=False, batch_size=2)
    metrics = BENCHMARKS.get("backends").run(BenchmarkContext(loaded, config, tmp_path, {}))
    rows = {(r["backend"], r["phase"]): r["status"] for r in read_rows(tmp_path / "latency.csv")}
    assert rows[("dense", "prefill")] == "ok"
    assert rows[("dense", "decode")] == "skipped: decode needs a causal LM (this model is a image_classifier)"
    assert rows[("structured", "prefill")].startswith("skipped: structured compaction removes transformer heads")
    assert metrics["prefill_ms"] > 0 and metrics["prefill_tokens_per_s"] > 0  # images per second


# -- the layer micro-benchmark ---------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.1, 10), min_size=1, max_size=6))
def test_break_even_lies_where_the_speedup_crosses_one(speedups):
    points = [(0.1 * (i + 1), v) for i, v in enumerate(speedups)]
    found = layers.break_even(points)
    if all(v < 1 for v in speedups):
        assert found is None
    else:
        first = next(i for i, v in enumerate(speedups) if v >= 1)
        low = points[first - 1][0] if first else points[0][0]
        assert low - 1e-9 <= found <= points[first][0] + 1e-9


def test_break_even_interpolates_in_log_speedup():
    assert layers.break_even([(0.5, 0.5), (0.9, 2.0)]) == pytest.approx(0.7)


def test_layers_benchmark_times_every_shape_and_phase(tmp_path):
    model = magnitude_pruned(tiny_model("llama"))
    metrics = run_benchmark(tmp_path, model, None, name="layers", sparsities=[0.5, 0.9], repeats=2, kernels=["csr", "bsr", "semi_structured"])
    rows = read_rows(tmp_path / "layers_bench.csv")
    shapes = {r["shape"] for r in rows}
    assert shapes == {"64x64", "32x64", "128x64", "64x128"}
    assert {r["phase"] for r in rows} == {"decode", "prefill"}
    assert {float(r["sparsity"]) for r in rows} == {0.5, 0.9}  # the model's own 0.5 is in the grid already
    assert all(float(r["csr_ms"]) > 0 and float(r["bsr_speedup"]) > 0 for r in rows)
    crossings = read_rows(tmp_path / "layers_break_even.csv")
    assert len(crossings) == 4 * 2 * 2 + 1 and len(metrics["break_even"]) == 16
    assert crossings[-1]["kernel"] == "semi_structured" and crossings[-1]["status"] == "skipped: 2:4 semi-structured kernels need a CUDA GPU (this run is on cpu)"
    assert all(float(r["csr_speedup"]) > 0 and r["semi_structured_ms"] == "" for r in rows)  # the column is there, empty


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                    reason="2:4 semi-structured kernels need a CUDA GPU with compute capability >= 8.0 (none here)")
def test_layers_benchmark_times_24_kernels_at_half_sparsity_on_gpu(tmp_path):
    model = magnitude_pruned(tiny_model("llama"))
    loaded = LoadedModel(model.half().cuda(), object(), "tiny", "causal_lm", torch.device("cuda"), torch.float16)
    layers_ = {n: m for n, m in model.named_modules() if type(m) is nn.Linear and "lm_head" not in n}
    config = bench_config("layers", sparsities=[0.7], repeats=2, kernels=["csr", "semi_structured"], seqlen=64)
    BENCHMARKS.get("layers").run(BenchmarkContext(loaded, config, tmp_path, layers_, None))
    rows = read_rows(tmp_path / "layers_bench.csv")
    timed_24 = [r for r in rows if r["semi_structured_ms"]]
    assert timed_24 and all(float(r["sparsity"]) == 0.5 and float(r["semi_structured_speedup"]) > 0 for r in timed_24)
    statuses = {r["status"] for r in read_rows(tmp_path / "layers_break_even.csv") if r["kernel"] == "semi_structured"}
    assert statuses <= {"ok"} or all(s.startswith("skipped: to_sparse_semi_structured failed") for s in statuses - {"ok"})


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    ({"backends": ["dense", "fpga"]}, "unknown benchmark backend 'fpga'"),
    ({"phases": ["prefill", "training"]}, "unknown benchmark phase 'training'"),
    ({"repeats": 0}, "benchmark.repeats must be an integer >= 1"),
    ({"disk_formats": ["zip"]}, "unknown compressed format 'zip'"),
    ({"repeat": 3}, r"unknown key benchmark.repeat \(did you mean benchmark.repeats\?\)"),
    ({"flops": "yes"}, r"benchmark.flops must be true or false \(got 'yes'\)"),
])
def test_bad_benchmark_settings_are_refused(overrides, message):
    with pytest.raises(PruneError, match=message):
        benchmark.check_settings(bench_config("backends", **overrides))


def test_an_unknown_benchmark_is_refused():
    with pytest.raises(PruneError, match="unknown benchmark 'stopwatch' \\(choose from: backends, layers, none, quick\\)"):
        benchmark.check_settings(OmegaConf.create({"name": "stopwatch"}))


def test_settings_that_exceed_memory_name_the_setting(monkeypatch):
    loaded = LoadedModel(tiny_model("llama"), object(), "tiny", "causal_lm", CPU, torch.float32)
    monkeypatch.setattr(benchmark, "available_memory_bytes", lambda: 10_000)
    with pytest.raises(PruneError, match="lower benchmark.batch_size or benchmark.seqlen"):
        benchmark.check_fits(loaded, bench_config("backends", batch_size=8, seqlen=128))
    monkeypatch.setattr(benchmark, "available_memory_bytes", lambda: 2**40)
    with pytest.raises(PruneError, match="benchmark.seqlen = 512 is longer than the context of tiny"):
        benchmark.check_fits(loaded, bench_config("backends", seqlen=512))


def test_cli_backends_run_writes_latency_csv(tmp_path, corpus):
    args = ["model=tiny_llama", "data.seqlen=32", "data.max_eval_tokens=256", "data/eval=text_file", f"data.eval.path={corpus}",
            "method=magnitude", "sparsity=0.5", "benchmark=backends", "benchmark.seqlen=16", "benchmark.repeats=2",
            "benchmark.warmup=1", "benchmark.decode_prompt=8", "benchmark.decode_tokens=2"]
    result = run_prune("run", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = sorted(p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["prefill_speedup"] > 0 and math.isfinite(metrics["flops_ratio"])
    assert "semi_structured,prefill,skipped: 2:4" in (run_dir / "latency.csv").read_text()


def test_a_spread_too_wide_to_trust_is_flagged_not_printed_clean():
    steady, busy = timing.summarize([1.0, 1.01, 0.99, 1.0, 1.02]), timing.summarize([1.0, 3.0, 1.0, 0.5, 2.5])
    assert timing.trust(steady) == "ok" and timing.spread(steady) == pytest.approx(0.03)
    assert timing.spread(busy) == pytest.approx(2.5) and timing.trust(busy).startswith("noisy: p90-min is 2.50 of the median")


@pytest.mark.parametrize("unpruned", [False, True])
def test_latency_without_a_same_run_reference_says_so(tmp_path, corpus, unpruned):
    args = ["model=tiny_llama", "data.seqlen=32", "data.max_eval_tokens=256", "data/eval=text_file", f"data.eval.path={corpus}",
            "method=magnitude", "benchmark=quick", "benchmark.seqlen=16", "benchmark.repeats=3", "benchmark.warmup=1",
            f"benchmark.unpruned={str(unpruned).lower()}"]
    result = run_prune("run", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = sorted(p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["latency_reference"] == ("unpruned" if unpruned else "none")
    assert ("has no same-run reference" in result.stdout) is not unpruned
    assert (metrics["prefill_trust"] == "ok") == ("noisy" not in result.stdout)  # a noisy figure is flagged on the console
    rows = list(csv.DictReader((run_dir / "latency.csv").open()))
    assert all(row["trust"] in ("ok",) or row["trust"].startswith("noisy") for row in rows if row["status"] == "ok")


def test_a_backend_that_raises_is_reported_failed_and_the_others_still_run():
    from prunecli.benchmark.model_bench import probe

    def broken():
        raise RuntimeError("expand is unsupported for SparseCsc tensors\nmore detail")

    calls = {"unpruned": lambda: 0.1, "csr": broken, "dense": lambda: 0.1}
    assert probe(calls, keep="unpruned") == {"csr": "failed: RuntimeError: expand is unsupported for SparseCsc tensors"}
    assert list(calls) == ["unpruned", "dense"]
    with pytest.raises(RuntimeError):
        probe({"unpruned": broken}, keep="unpruned")  # the reference itself must run
