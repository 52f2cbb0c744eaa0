"""Where a layer-wise pruning block's time goes (#19): one SmolLM2 block, statistics pass + re-run.

Loads the packaged model, catches block 0's inputs for ``--windows`` random-token windows of 512
tokens in batches of ``--batch``, runs the pipeline's two passes of that block (Wanda's statistics
hooks, the pass cut short once every layer has its input, then the full re-run), as the pipeline does
(the heap kept, the chunked attention, oneDNN's linear), once to warm up, then once under ``torch.profiler``, and prints
the self CPU time by kind: matmuls, attention, elementwise work, the statistics, the rest.
``--compile`` instead times one block forward eager vs ``torch.compile`` (median of 5, after a
warm-up) and the compilation itself. ``--heap`` instead times the two passes with the heap as glibc
leaves it and inside :func:`~prunecli.environment.reuse_freed_memory`; ``--attention``, with
transformers' ``sdpa`` (PyTorch's CPU flash kernel) and with
:func:`~prunecli.models.attention.chunked_causal_attention`; ``--linear``, with ``F.linear`` (MKL) and with
:func:`~prunecli.models.linear.onednn_linear`; each in alternation (``--rounds`` pairs), with the minor page
faults of each. ``--excess`` instead runs SparseGPT's two passes of the block (the statistics pass with the Hessians'
``X^T X``, then the re-run) ``--rounds`` times and prints, per kind of work, the median seconds against its floor: its
FLOPs at :func:`~prunecli.methods.floor.matmul_throughput`'s rate, as ``metrics.json``'s ``floor`` counts them.
``--prefault`` instead reads and then writes every block's linear weights as a pruning method does
(the statistics pass reads them, the method zeroes half of them), every other block after
:func:`~prunecli.environment.prefault_for_writing`, and prints the seconds and minor faults per block of each::

    python scripts/block_profile.py --batch 8
    python scripts/block_profile.py --batch 1
    python scripts/block_profile.py --batch 8 --compile
    python scripts/block_profile.py --batch 8 --heap
    python scripts/block_profile.py --batch 8 --attention
    python scripts/block_profile.py --batch 8 --linear
    python scripts/block_profile.py --batch 8 --excess
    python scripts/block_profile.py --prefault
"""

from __future__ import annotations

import argparse
import collections
import resource
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import torch
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hydra import compose, initialize_config_dir  # noqa: E402
from prunecli.environment import prefault_for_writing, reuse_freed_memory  # noqa: E402
from prunecli.methods.layerwise import block_inputs, run_until_inputs_collected  # noqa: E402
from prunecli.methods.floor import counting, linear_flops, matmul_shapes, matmul_throughput  # noqa: E402
from prunecli.methods.statistics import Hessian, InputNorms, collect_inputs  # noqa: E402
from prunecli.models import load_model, parse_model  # noqa: E402
from prunecli.models.attention import calibration_attention  # noqa: E402
from prunecli.models.layout import blocks_of  # noqa: E402
from prunecli.models.linear import calibration_linear  # noqa: E402

KINDS = {"matmul": ("aten::mm", "aten::addmm", "mkldnn::_linear_pointwise"),
         "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::bmm", "aten::_softmax", "aten::masked_fill_"),
         "statistics": ("aten::square", "aten::sum", "aten::_to_copy", "aten::add_"),
         "elementwise": ("aten::mul", "aten::silu", "aten::add", "aten::pow", "aten::cat", "aten::neg", "aten::mean", "aten::rsqrt",
                         "aten::div_", "aten::copy_")}


def median_seconds(call, repeats: int = 5) -> float:
    call()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="calibration windows per forward")
    parser.add_argument("--windows", type=int, default=64)
    mode = parser.add_mutually_exclusive_group()  # one measurement per run; none: the profile
    mode.add_argument("--compile", action="store_true", help="time eager vs torch.compile of one block forward")
    mode.add_argument("--heap", action="store_true", help="time the passes without and with reuse_freed_memory, in alternation")
    mode.add_argument("--attention", action="store_true", help="time the passes with sdpa and with the chunked attention, in alternation")
    mode.add_argument("--linear", action="store_true", help="time the passes with F.linear and with oneDNN's linear, in alternation")
    mode.add_argument("--prefault", action="store_true", help="time reading then writing each block's weights, every other block prefaulted")
    mode.add_argument("--excess", action="store_true", help="SparseGPT's two passes: seconds per kind of work against its floor")
    parser.add_argument("--rounds", type=int, default=5, help="--heap, --attention, --linear: pairs of rounds (each round: the two passes, twice); "
                                                              "--excess: rounds of the two passes")
    args = parser.parse_args()
    for option in ("batch", "windows", "rounds"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1")
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose("run")
    model = load_model(parse_model(cfg.model)).model
    _, blocks = blocks_of(model)
    if args.prefault:
        time_writes(blocks)
        return
    block = blocks[0]
    windows = torch.randint(0, model.config.vocab_size, (args.windows, 512), generator=torch.Generator().manual_seed(0))
    batches = block_inputs(model, block, windows, args.batch, torch.device("cpu"))
    if args.compile:
        first = batches[0]
        eager = median_seconds(lambda: first.run(block))
        began = time.perf_counter()
        compiled = torch.compile(block)
        compiled(first.hidden, *first.args, **first.kwargs)
        compile_s = time.perf_counter() - began
        fused = median_seconds(lambda: compiled(first.hidden, *first.args, **first.kwargs))
        print(f"one block forward, {args.batch} windows: eager {eager:.3f} s, compiled {fused:.3f} s, compilation {compile_s:.1f} s")
        return
    layers = {name: module for name, module in block.named_modules() if isinstance(module, torch.nn.Linear)}

    cpu = torch.device("cpu")

    def passes(onednn: bool = True) -> None:
        """The two passes, each (as in the pipeline) with the block's weights packed for oneDNN at its start."""
        linear = (lambda: calibration_linear(block, cpu)) if onednn else nullcontext
        with collect_inputs(layers, InputNorms, stop_when_done=True), linear():
            for batch in batches:
                run_until_inputs_collected(batch, block)
        with linear():
            for batch in batches:
                batch.run(block)

    if args.excess:
        with reuse_freed_memory(), calibration_attention(model, cpu):
            excess(block, batches, layers, args.rounds)
        return
    if args.heap:
        with calibration_attention(model, cpu):
            alternate({"default": passes, "reused": inside(reuse_freed_memory, passes)}, args.rounds)
        return
    if args.attention:
        with reuse_freed_memory():
            alternate({"sdpa": passes, "chunked": inside(lambda: calibration_attention(model, cpu), passes)}, args.rounds)
        return
    if args.linear:
        with reuse_freed_memory(), calibration_attention(model, cpu):
            alternate({"F.linear": lambda: passes(onednn=False), "oneDNN": passes}, args.rounds)
        return
    with reuse_freed_memory(), calibration_attention(model, cpu):
        passes()
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            began = time.perf_counter()
            passes()
            wall = time.perf_counter() - began
    seconds = collections.Counter()
    for event in profiler.key_averages():
        kind = next((name for name, ops in KINDS.items() if event.key in ops), "other")
        seconds[kind] += event.self_cpu_time_total / 1e6
    total = sum(seconds.values())
    print(f"one block, {args.windows} windows in batches of {args.batch}: {wall:.2f} s under the profiler; self CPU time:")
    for kind, value in seconds.most_common():
        print(f"  {kind:12s} {value:6.3f} s  {value / total:6.1%}")


def excess(block: torch.nn.Module, batches: list, layers: dict[str, torch.nn.Module], rounds: int) -> None:
    """SparseGPT's passes of ``block`` as the pipeline runs them (its weights packed per pass, the statistics pass cut
    short before ``down_proj``), ``rounds`` times after one warm-up, timed by kind of work: the linear layers' products
    (hooks registered after the statistics hooks, so the Hessians are not in them), the Hessians' ``X^T X``, the
    attention module less its linear layers and Hessians (rotary embedding, scores, softmax, reshapes) and the rest of the block
    (norms, SiLU x up, residual adds). FLOPs as the floor counts them: the products' and Hessians' by formula, the
    attention's the counter's count of the warm-up less those; floor seconds at the floor's matmul rate."""
    cpu = torch.device("cpu")
    seconds: collections.Counter = collections.Counter()
    flops: collections.Counter = collections.Counter()

    class TimedHessian(Hessian):
        def add(self, x: torch.Tensor) -> None:
            start = time.perf_counter()
            super().add(x)
            spent = time.perf_counter() - start
            seconds["hessians"] += spent
            if attention_began:  # q/k/v's and o's, added by hooks inside the attention module's call
                seconds["hessians in attention"] += spent
            flops["hessians"] += self.band_flops(x.numel() // x.shape[-1])

    began: dict[str, float] = {}

    @contextmanager
    def timed_linears() -> Iterator[None]:
        """Time each linear layer's call and count its FLOPs (the floor's rule), while inside."""
        def before(name: str):
            return lambda module, args: began.__setitem__(name, time.perf_counter())

        def after(name: str):
            def hook(module, args, output) -> None:
                kind = "attention linears" if name.startswith("self_attn.") else "mlp linears"
                seconds[kind] += time.perf_counter() - began.pop(name)
                flops[kind] += linear_flops(args[0], module.weight)
            return hook
        hooks = [hook for name, module in layers.items()
                 for hook in (module.register_forward_pre_hook(before(name)), module.register_forward_hook(after(name)))]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    attention_began: list[float] = []
    attention_hooks = [block.self_attn.register_forward_pre_hook(lambda module, args, kwargs: attention_began.append(time.perf_counter()), with_kwargs=True),
                       block.self_attn.register_forward_hook(lambda module, args, output: seconds.update(attention=time.perf_counter() - attention_began.pop()))]

    def passes() -> float:
        start = time.perf_counter()
        # the timing hooks entered after the statistics hooks: they run after them, so the Hessians are not in the products
        with collect_inputs(layers, TimedHessian, stop_when_done=True), calibration_linear(block, cpu), timed_linears():
            for batch in batches:
                run_until_inputs_collected(batch, block)
        with calibration_linear(block, cpu), timed_linears():
            for batch in batches:
                batch.run(block)
        return time.perf_counter() - start

    counted = {"passes": 0}
    with counting(True, counted, "passes"):
        passes()
    attention_flops = counted["passes"] - flops["hessians"] - flops["attention linears"] - flops["mlp linears"]
    rate = matmul_throughput(matmul_shapes(layers, batches[0].hidden.shape[0] * batches[0].hidden.shape[1]), cpu)
    figures: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(rounds):
        seconds.clear()
        flops.clear()
        total = passes()
        seconds["attention"] -= seconds["attention linears"] + seconds["hessians in attention"]
        seconds["rest"] = total - sum(seconds[kind] for kind in ("hessians", "attention linears", "mlp linears", "attention"))
        for kind, value in seconds.items():
            figures[kind].append(value)
        figures["total"].append(total)
    for hook in attention_hooks:
        hook.remove()
    flops["attention"] = attention_flops
    print(f"SparseGPT's two passes of one block, {len(batches)} batches of {batches[0].hidden.shape[0]} windows, median of {rounds} "
          f"rounds; floor rate {rate / 1e9:.0f} GFLOP/s")
    print(f"{'work':18s} {'seconds':>8s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'floor s':>8s} {'excess s':>9s}")
    for kind in ("mlp linears", "attention linears", "hessians", "attention", "rest", "total"):
        value = statistics.median(figures[kind])
        work = sum(flops.values()) if kind == "total" else flops[kind]
        floor_s = work / rate
        print(f"{kind:18s} {value:8.3f} {work / 1e9:8.1f} {work / value / 1e9 if work else 0:8.0f} {floor_s:8.3f} {value - floor_s:9.3f}")


def time_writes(blocks: list[torch.nn.Module]) -> None:
    """Each block's linear weights read (a sum, as the statistics pass reads them) then half of each zeroed in place (as
    a method writes them), the odd blocks after :func:`~prunecli.environment.prefault_for_writing` (its time counted):
    the seconds and minor page faults of each block, median per kind."""
    figures: dict[str, list[tuple[float, int]]] = {"faulted": [], "prefaulted": []}
    for index, block in enumerate(blocks):
        weights = [module.weight for module in block.modules() if isinstance(module, torch.nn.Linear)]
        masks = [torch.rand(weight.shape, generator=torch.Generator().manual_seed(index)) < 0.5 for weight in weights]
        faults, began = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        if index % 2 and not prefault_for_writing(weights):
            raise SystemExit("madvise(MADV_POPULATE_WRITE) refused here (Linux 5.14+ only)")
        for weight, mask in zip(weights, masks):
            weight.sum()
            weight.masked_fill_(mask, 0)
        figures["prefaulted" if index % 2 else "faulted"].append(
            (time.perf_counter() - began, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))
    linears = [module for module in blocks[0].modules() if isinstance(module, torch.nn.Linear)]  # blocks have one shape
    pages = sum(module.weight.numel() * module.weight.element_size() for module in linears) / resource.getpagesize()
    for name, values in figures.items():
        seconds = statistics.median(s for s, _ in values)
        print(f"{name:10s} per block: {seconds * 1e3:.1f} ms (of {', '.join(f'{s * 1e3:.0f}' for s, _ in values)}), "
              f"minor faults median {statistics.median(f for _, f in values):.0f}; {seconds / pages * 1e6:.1f} us per page of weights")


def inside(setting: Callable[[], ContextManager], call: Callable[[], None]) -> Callable[[], None]:
    """``call`` run inside a fresh ``setting()``."""
    def run() -> None:
        with setting():
            call()
    return run


def alternate(runs: dict[str, Callable[[], None]], rounds: int) -> None:
    """``rounds`` rounds of each of the two ``runs`` (twice each) in turn (after one warm-up of each): the seconds and
    minor page faults of every round, and the per-round time ratios second / first."""
    figures: dict[str, list[tuple[float, int]]] = {name: [] for name in runs}
    for run in runs.values():
        run()
    for _ in range(rounds):
        for name, run in runs.items():
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            began = time.perf_counter()
            run()
            run()
            figures[name].append((time.perf_counter() - began, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))
    for name, values in figures.items():
        print(f"{name:8s} s: {', '.join(f'{s:.2f}' for s, _ in values)}  median {statistics.median(s for s, _ in values):.3f}; "
              f"minor faults median {statistics.median(f for _, f in values):.0f}")
    first, second = figures.values()
    ratios = [b[0] / a[0] for a, b in zip(first, second)]
    print(f"{' / '.join(reversed(runs))} per pair: {', '.join(f'{r:.3f}' for r in ratios)}; median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
