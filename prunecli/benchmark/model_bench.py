"""``benchmark=backends`` (and its small sibling ``quick``): the pruned model on each execution backend.

1. Build every backend of ``benchmark.backends`` from the pruned model (:mod:`backends`);
   one that cannot run here gets a ``skipped: <reason>`` row. With ``benchmark.unpruned: true``
   the model as it was before pruning is benchmarked too, as the reference of every speedup.
2. Check each backend's logits against ``dense`` on the prefill input (``max_abs_diff``).
3. Time, interleaved (:func:`timing.interleaved`): *prefill* = one forward over
   ``batch_size x seqlen`` tokens (images for an image model); *decode* (causal LMs) = after an
   untimed ``decode_prompt``-token prefill, ``decode_tokens`` single-token steps on the KV cache,
   reported per token. ``speedup`` = median over rounds of ``t_reference / t_backend``.
4. FLOPs of one prefill (:mod:`flops`): ``theoretical_speedup = flops_reference / flops_backend``,
   ``efficiency = speedup / theoretical_speedup``.
5. Memory: the backend's weights (``model_mb``) and the peak extra memory of one prefill
   (``activation_mb``: CUDA ``max_memory_allocated``, else sampled RSS); disk: the pruned model's
   weights saved dense and sparse-compressed (:mod:`sizes`).

Rows go to ``latency.csv`` (one per backend x phase); the pruned model's own figures on dense
kernels (``prefill_ms``, ``prefill_speedup``, ...) go to ``metrics.json`` / ``results.csv``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from prunecli.benchmark import Benchmark, BenchmarkContext, ModelBenchOptions, register
from prunecli.benchmark.backends import BackendSettings, BackendSkipped, SparseLinear, backend_settings, build
from prunecli.benchmark.flops import block_nonzeros, count_flops, half_of_24, nonzeros
from prunecli.benchmark.sizes import disk_bytes, model_bytes
from prunecli.benchmark.timing import interleaved, paired_speedup, peak_memory, spread, summarize, timed, trust
from prunecli.errors import PruneError
from prunecli.outputs import write_csv

LATENCY_COLUMNS = [
    "backend", "phase", "status", "reference", "batch_size", "tokens", "median_ms", "p90_ms", "min_ms", "std_ms", "repeats", "spread", "trust",
    "tokens_per_s", "speedup", "flops", "theoretical_speedup", "efficiency", "max_abs_diff", "model_mb", "activation_mb",
    "sparse_layers",
]
MB = 2**20


def logits(output: Any) -> torch.Tensor:
    """The main output tensor of a forward (HF ``ModelOutput`` or a plain tensor)."""
    if isinstance(output, torch.Tensor):
        return output
    for key in ("logits", "last_hidden_state"):
        if getattr(output, key, None) is not None:
            return getattr(output, key)
    return output[0]


def prefill_call(model: nn.Module, inputs: tuple[tuple, dict], device: torch.device):
    args, kwargs = inputs[0], forward_kwargs(inputs[1])
    return lambda: timed(lambda: model(*args, **kwargs), device)


def decode_call(model: nn.Module, prompt: torch.Tensor, new_tokens: int, device: torch.device):
    """Untimed prefill of ``prompt``, then the timed greedy decode of ``new_tokens`` on the KV cache."""
    def call() -> float:
        output = model(input_ids=prompt, use_cache=True)
        state = {"cache": output.past_key_values, "token": output.logits[:, -1:].argmax(-1)}

        def steps() -> None:
            for _ in range(new_tokens):
                step = model(input_ids=state["token"], past_key_values=state["cache"], use_cache=True)
                state["cache"], state["token"] = step.past_key_values, step.logits[:, -1:].argmax(-1)
        return timed(steps, device)
    return call


def sparse_layouts(model: nn.Module) -> dict[str, str]:
    return {name: module.layout for name, module in model.named_modules() if isinstance(module, SparseLinear)}


def build_candidates(ctx: BenchmarkContext, settings: BackendSettings, inputs: tuple[tuple, dict]) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """``{name: module}`` to time (``unpruned`` first when kept) and ``{name: status}`` of the others:
    ``skipped: <reason>`` (cannot run here) or ``failed: <error>`` (its first forward raised)."""
    options = ctx.settings
    args, kwargs = inputs
    candidates: dict[str, nn.Module] = {}
    left_out: dict[str, str] = {}
    if ctx.unpruned is not None:
        candidates["unpruned"] = torch.compile(ctx.unpruned) if options.compile else ctx.unpruned
    for name in tqdm(options.backends, desc="benchmark: building backends", unit="backend", leave=False):
        try:
            candidates[name] = build(name, ctx.loaded.model, settings, options.compile).eval()
        except BackendSkipped as reason:
            left_out[name] = f"skipped: {reason}"
    calls = {name: (lambda model=model: model(*args, **forward_kwargs(kwargs))) for name, model in candidates.items()}
    for name, status in probe(calls, keep="unpruned").items():
        left_out[name] = status
        del candidates[name]
    return candidates, left_out


def probe(calls: dict, keep: str) -> dict[str, str]:
    """Run each call once; return ``{name: "failed: <error>"}`` for those that raise (they are
    removed from ``calls``). The reference ``keep`` must work: its error propagates."""
    failed = {}
    for name, call in list(calls.items()):
        try:
            call()
        except (RuntimeError, NotImplementedError, TypeError, ValueError) as error:  # e.g. torch.compile of a sparse layout
            if name == keep:
                raise
            first_line = (str(error).strip().splitlines() or [""])[0]
            failed[name] = f"failed: {type(error).__name__}: {first_line}"
            del calls[name]
    return failed


def forward_kwargs(kwargs: dict) -> dict:
    """A language model's forward without a KV cache (prefill); other inputs as they are."""
    return {**kwargs, "use_cache": False} if "input_ids" in kwargs else kwargs


def kept_rule(layout: str, block: int):
    """What a sparse layout's kernel multiplies: nonzeros (CSR), nonzero tiles (BSR), half (2:4)."""
    return {"csr": nonzeros, "2:4": half_of_24}.get(layout) or block_nonzeros(block)


def flops_of(candidates: dict[str, nn.Module], dense_model: nn.Module, inputs: tuple[tuple, dict], block: int) -> dict[str, int]:
    """Prefill FLOPs each candidate's kernels perform (see :mod:`flops`)."""
    args, kwargs = inputs[0], forward_kwargs(inputs[1])
    dense_count = count_flops(dense_model, args, kwargs)
    result = {}
    for name, model in candidates.items():
        layouts = sparse_layouts(model)
        if not layouts:  # a dense model: count it as it is shaped (unpruned, structured); `dense` is a copy of dense_model
            result[name] = dense_count.dense if name == "dense" else count_flops(getattr(model, "_orig_mod", model), args, kwargs).dense
            continue
        result[name] = dense_count.effective(kept_rule(next(iter(layouts.values())), block), set(layouts))
    return result


@torch.inference_mode()
def benchmark_backends(ctx: BenchmarkContext) -> dict:
    options, loaded = ctx.settings, ctx.loaded
    settings = backend_settings(loaded, options, options.sparse_min_sparsity)
    inputs = loaded.example_input(options.batch_size, options.seqlen)
    try:
        candidates, left_out = build_candidates(ctx, settings, inputs)
        rows, metrics = measure(ctx, candidates, inputs, settings) if candidates else ([], {})
    except (torch.OutOfMemoryError, MemoryError) as error:
        raise PruneError(f"the benchmark ran out of memory at benchmark.batch_size={options.batch_size} benchmark.seqlen={options.seqlen}: lower them ({type(error).__name__})") from None
    rows += [{"backend": name, "phase": phase, "status": status} for name, status in left_out.items() for phase in options.phases]
    write_csv(ctx.run_dir / "latency.csv", rows, LATENCY_COLUMNS)
    return metrics


def measure(ctx: BenchmarkContext, candidates: dict[str, nn.Module], inputs: tuple[tuple, dict],
            settings: BackendSettings) -> tuple[list[dict], dict]:
    options, loaded = ctx.settings, ctx.loaded
    device = loaded.device
    reference = "unpruned" if "unpruned" in candidates else next(iter(candidates))
    args, kwargs = inputs
    prefill_kwargs = forward_kwargs(kwargs)
    dense_name = "dense" if "dense" in candidates else reference
    expected = logits(candidates[dense_name](*args, **prefill_kwargs)).float()
    diffs = {name: (logits(model(*args, **prefill_kwargs)).float() - expected).abs().max().item()
             for name, model in candidates.items() if name != "unpruned"}  # the model before pruning differs, of course
    flops = flops_of(candidates, loaded.model, inputs, settings.bsr_block) if options.flops else {}
    memory = {}
    for name, model in candidates.items():
        with peak_memory(device) as peak:
            model(*args, **prefill_kwargs)
        memory[name] = peak["peak_bytes"] / MB
    rows, metrics = [], {}
    for phase in options.phases:
        if phase == "decode" and loaded.task != "causal_lm":
            rows += [{"backend": name, "phase": phase, "status": f"skipped: decode needs a causal LM (this model is a {loaded.task})"} for name in candidates]
            continue
        if phase == "prefill":
            calls = {name: prefill_call(model, inputs, device) for name, model in candidates.items()}
            per, tokens = 1, (args[0].shape[0] if args else kwargs["input_ids"].numel())  # images, or tokens
        else:
            prompt = kwargs["input_ids"][:, : options.decode_prompt]
            calls = {name: decode_call(model, prompt, options.decode_tokens, device) for name, model in candidates.items()}
            per, tokens = options.decode_tokens, prompt.shape[0]  # per step: one token per sequence
        failed = probe(calls, keep=reference)
        rows += [{"backend": name, "phase": phase, "status": status} for name, status in failed.items()]
        times = interleaved(calls, options.warmup, options.repeats, desc=f"benchmark {phase}: {len(calls)} backend(s)")
        for name, model in candidates.items():
            if name in failed:
                continue
            stats = summarize(times[name], per)
            speedup = paired_speedup(times[reference], times[name])
            theory = flops[reference] / flops[name] if phase == "prefill" and flops else None
            rows.append({
                "backend": name, "phase": phase, "status": "ok", "reference": reference, "batch_size": options.batch_size,
                "tokens": tokens * per, **stats, "spread": spread(stats), "trust": trust(stats),
                "tokens_per_s": tokens / (stats["median_ms"] / 1e3), "speedup": speedup,
                "flops": flops.get(name) if phase == "prefill" else None, "theoretical_speedup": theory,
                "efficiency": speedup / theory if theory else None, "max_abs_diff": diffs.get(name),
                "model_mb": model_bytes(model) / MB, "activation_mb": memory[name], "sparse_layers": len(sparse_layouts(model)),
            })
        own_stats = summarize(times.get("dense") or times[reference], per)  # the pruned model as it is
        own = own_stats["median_ms"]
        metrics |= {f"{phase}_ms": own, f"{phase}_tokens_per_s": tokens / (own / 1e3), f"{phase}_repeats": options.repeats,
                    f"{phase}_spread": spread(own_stats), f"{phase}_trust": trust(own_stats)}
        if reference == "unpruned" and "dense" in times:
            metrics[f"{phase}_speedup"] = paired_speedup(times["unpruned"], times["dense"])
    if flops:
        metrics["flops"] = flops.get("dense", flops[reference])
        if reference == "unpruned":
            metrics["flops_unpruned"] = flops["unpruned"]
            metrics["flops_ratio"] = flops["unpruned"] / metrics["flops"]
    metrics["latency_reference"] = reference if reference == "unpruned" else "none"  # no unpruned model timed beside it
    metrics["model_mb"] = model_bytes(loaded.model) / MB
    formats = list(options.disk_formats)
    if formats:
        with tempfile.TemporaryDirectory() as folder:
            for fmt, size in disk_bytes(loaded.model, Path(folder), formats).items():
                metrics[f"disk_mb_{fmt}"] = size / MB
    metrics["backends"] = {row["backend"] + "/" + row["phase"]: {k: row[k] for k in ("median_ms", "speedup", "efficiency")} for row in rows if row["status"] == "ok"}
    return rows, metrics


register(Benchmark("quick", benchmark_backends, ModelBenchOptions))
register(Benchmark("backends", benchmark_backends, ModelBenchOptions))
