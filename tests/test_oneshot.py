"""Wanda, SparseGPT and OWL on the layer-wise calibration pipeline."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from prunecli.errors import PruneError
from prunecli.methods import METHODS, PruneContext
from prunecli.methods.allocation import ALLOCATIONS, owl_block_sparsities
from prunecli.methods import layerwise
from prunecli.methods.masks import layerwise_mask, prune_count, rowwise_mask
from prunecli.methods.floor import counted_rules
from prunecli.methods.sparsegpt import (INVERSE_LEAF, obs_factor, obs_flops, one_cpu_thread, sparsegpt_layer, sparsegpt_shared,
                                       upper_triangular_inverse)
from prunecli.methods.statistics import Hessian, InputNorms, collect_inputs, shared_inputs
from prunecli.methods.targets import select_layers, weight_matrix
from prunecli.models.layout import blocks_of
from tests.conftest import IGNORE, context, finished_run, run_prune, tiny_cli_args, tiny_model


def slow_wanda_masks(model, windows, sparsity):
    """Wanda written out directly: for each block in order, run the *whole* model (earlier blocks
    already pruned) and record each linear's inputs; score |W_ij| * sqrt(sum_t x_tj^2); in every
    row prune the floor(s * cols) lowest scores, ties to the lower column."""
    prefix, blocks = blocks_of(model)
    layers = select_layers(model, "all", IGNORE)
    masks = {}
    for index in range(len(blocks)):
        names = [n for n in layers if n.startswith(f"{prefix}.{index}.")]
        inputs = {}

        def record(module, args, output, name):
            inputs[name] = args[0].reshape(-1, args[0].shape[-1])

        hooks = [layers[n].register_forward_hook(lambda m, a, o, n=n: record(m, a, o, n)) for n in names]
        with torch.no_grad():
            model(input_ids=windows)
        for hook in hooks:
            hook.remove()
        for name in names:
            weight = weight_matrix(layers[name])
            norms = [math.sqrt(sum(float(v) ** 2 for v in inputs[name][:, j])) for j in range(weight.shape[1])]
            mask = torch.zeros_like(weight, dtype=torch.bool)
            k = prune_count(weight.shape[1], sparsity)
            for i in range(weight.shape[0]):
                order = sorted(range(weight.shape[1]), key=lambda j: (abs(float(weight[i, j])) * norms[j], j))
                mask[i, order[:k]] = True
            with torch.no_grad():
                weight[mask] = 0
            masks[name] = mask
    return masks


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_wanda_mask_equals_the_formula_computed_directly(arch):
    windows = torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(1))
    reference = tiny_model(arch).double()
    expected = slow_wanda_masks(reference, windows, 0.5)
    model = tiny_model(arch).double()
    METHODS.get("wanda").prune(context(model, "wanda", windows))
    for name, module in select_layers(model, "all", IGNORE).items():
        assert torch.equal(weight_matrix(module) == 0, expected[name]), name


def correlated_inputs(features=64, tokens=512, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=generator) / math.sqrt(features)
    scales = torch.logspace(-1, 1, features)[torch.randperm(features, generator=generator)]  # mixed within column blocks
    return (torch.randn(tokens, features, generator=generator) @ mixing) * scales


@pytest.mark.parametrize("sparsity, nm", [(0.5, None), (0.7, None), (0.5, (2, 4))])
def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(sparsity, nm):
    X = correlated_inputs()
    W = torch.randn(48, 64, generator=torch.Generator().manual_seed(2))
    target = X @ W.t()
    hessian = 2 * X.t() @ X / X.shape[0]

    pruned = W.clone()
    sparsegpt_layer(pruned, hessian, sparsity, nm, blocksize=32)
    assert int((pruned == 0).sum()) == (W.numel() // 2 if nm else 2 * prune_count(32 * 48, sparsity))

    from prunecli.methods.masks import nm_mask

    def masked(scores, group):
        if nm:
            return W.masked_fill(nm_mask(scores, *nm), 0)
        return W.masked_fill(rowwise_mask(scores, sparsity) if group == "row" else layerwise_mask(scores, sparsity), 0)

    magnitude = masked(W.abs(), "layer")
    wanda = masked(W.abs() * X.norm(dim=0), "row")
    error = lambda w: torch.linalg.norm(target - X @ w.t())  # noqa: E731
    assert error(pruned) < error(wanda) < error(magnitude)


def sparsegpt_paper(W, H, sparsity, blocksize, percdamp=0.01, nm=None):
    """Algorithm 1 of Frantar & Alistarh (2023), line by line, in float64: the oracle for
    :func:`sparsegpt_layer`. ``Hinv`` = upper Cholesky factor of ``(H + lambda I)^-1``; the mask of
    each block of ``blocksize`` columns (the paper's B_s = B) prunes the ``floor(p * numel)`` lowest
    ``w^2 / [Hinv]_cc^2`` of the block; with N:M (B_s = M) the M - N lowest of each row's M columns,
    chosen when the loop reaches them."""
    W, H = W.double().clone(), H.double()
    rows, cols = W.shape
    H = H + percdamp * torch.diag(H).mean() * torch.eye(cols, dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.linalg.inv(H), upper=True)
    M = torch.ones_like(W, dtype=torch.bool)
    for i in range(0, cols, blocksize):
        B = min(blocksize, cols - i)
        E = torch.zeros(rows, B, dtype=W.dtype)
        d = torch.diag(Hinv)
        if nm is None:
            saliency = (W[:, i:i + B] ** 2 / d[i:i + B] ** 2).flatten()
            block = torch.ones(rows * B, dtype=torch.bool)
            block[saliency.argsort()[: int(sparsity * saliency.numel())]] = False
            M[:, i:i + B] = block.reshape(rows, B)
        for j in range(i, i + B):
            if nm is not None and (j - i) % nm[1] == 0:  # N:M: each group's mask from the weights as they are when reached
                n, m = nm
                saliency = W[:, j:j + m] ** 2 / d[j:j + m] ** 2
                M[:, j:j + m].scatter_(1, saliency.argsort(dim=1)[:, : m - n], False)
            E[:, j - i] = W[:, j] / Hinv[j, j]
            E[:, j - i] = (~M[:, j]).double() * E[:, j - i]
            W[:, j:i + B] -= torch.outer(E[:, j - i], Hinv[j, j:i + B])
        W[:, i + B:] -= E @ Hinv[i:i + B, i + B:]
    return W * M


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3 * INVERSE_LEAF + 7), seed=st.integers(0, 2**16))
def test_upper_triangular_inverse_is_the_inverse(n, seed):
    """Any size (one leaf, halves of odd sizes, several levels): written into ``out``, exactly zero below the
    diagonal, and the float64 inverse to float32 rounding (a well-conditioned matrix: unit-sized diagonal)."""
    generator = torch.Generator().manual_seed(seed)
    upper = (torch.randn(n, n, generator=generator) / n ** 0.5).triu_() + torch.eye(n) * (1 + torch.rand(n, generator=generator))
    out = torch.full((n, n), float("nan"))
    result = upper_triangular_inverse(upper, out)
    assert result is out and torch.equal(torch.tril(out, -1), torch.zeros(n, n))
    torch.testing.assert_close(out.double(), torch.linalg.inv(upper.double()), rtol=1e-5, atol=1e-5)


def test_obs_factor_is_the_upper_cholesky_factor_of_the_damped_inverse():
    """``U`` of a Hessian wider than one leaf of the triangular inverse: ``chol(inv(H + damp I))`` in float64."""
    X = correlated_inputs(features=2 * INVERSE_LEAF + 44, tokens=1024, seed=3)
    H = 2 * X.t() @ X / len(X)
    U, dead = obs_factor(H, 0.01, "", [])
    damped = H.double() + 0.01 * torch.diag(H.double()).mean() * torch.eye(len(H), dtype=torch.float64)
    expected = torch.linalg.cholesky(torch.linalg.inv(damped), upper=True)
    assert not dead.any()
    torch.testing.assert_close(U.double(), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("sparsity, nm, blocksize", [(0.5, None, 8), (0.7, None, 16), (0.6, None, 24), (0.5, (2, 4), 8), (0.5, (2, 4), 24), (0.5, (4, 8), 24)])
def test_sparsegpt_equals_the_papers_algorithm_on_a_small_layer(sparsity, nm, blocksize):
    X = correlated_inputs(features=24, tokens=256, seed=1)
    W = torch.randn(6, 24, generator=torch.Generator().manual_seed(2))
    H = 2 * X.t() @ X / len(X)
    expected = sparsegpt_paper(W, H, sparsity, blocksize, nm=nm)
    pruned = W.clone()
    sparsegpt_layer(pruned, H, sparsity, nm, blocksize=blocksize)
    assert torch.equal(pruned == 0, expected == 0)
    torch.testing.assert_close(pruned.double(), expected, rtol=1e-4, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(rows=st.lists(st.integers(1, 9), min_size=1, max_size=4), sparsities=st.lists(st.sampled_from([0.0, 0.3, 0.5, 0.9]), min_size=4, max_size=4),
       nm=st.sampled_from([None, (2, 4), (1, 4)]), blocksize=st.sampled_from([4, 8, 128]), seed=st.integers(0, 2**16))
def test_layers_sharing_an_input_are_pruned_as_if_one_by_one(rows, sparsities, nm, blocksize, seed):
    """One factor and one column loop over stacked rows == each layer alone (the oracle: sparsegpt_layer
    per layer), each at its own sparsity, dead inputs included: the same masks and the same weights up
    to the float order of the lazy update's product (BLAS may pick another kernel for another row count)."""
    generator = torch.Generator().manual_seed(seed)
    X = correlated_inputs(features=16, tokens=64, seed=seed)
    X[:, 3] = 0
    H = 2 * X.t() @ X / len(X)
    weights = [torch.randn(r, 16, generator=generator) for r in rows]
    alone = [w.clone() for w in weights]
    for weight, sparsity in zip(alone, sparsities):
        sparsegpt_layer(weight, H, sparsity, nm, blocksize=blocksize)
    stacked = [w.clone() for w in weights]
    with one_cpu_thread(torch.device("cpu")):
        sparsegpt_shared(stacked, obs_factor(H, 0.01, "", []), sparsities[: len(rows)], nm, blocksize=blocksize)
    for a, b in zip(alone, stacked):
        assert torch.equal(a == 0, b == 0)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows, columns, blocksize, nm", [(5, 300, 128, None), (3, 40, 7, None), (4, 96, 30, (2, 4)), (2, 64, 128, (4, 8))])
def test_obs_flops_is_what_the_column_loop_runs(rows, columns, blocksize, nm):
    """The formula (counted for the loops run on worker threads, where the FLOP counter cannot see them) equals the
    counter's own count of the loop, over several blocks and runs, ragged ones and N:M's included."""
    X = torch.randn(4 * columns, columns, generator=torch.Generator().manual_seed(0))
    factor, weight = obs_factor(X.t() @ X, 0.01, "", []), torch.randn(rows, columns)
    with FlopCounterMode(display=False, custom_mapping=counted_rules()) as counter:
        sparsegpt_shared([weight], factor, [0.5], nm, blocksize)
    assert counter.get_total_flops() == obs_flops(rows, columns)


def test_shared_inputs_group_the_layers_fed_one_tensor():
    model = tiny_model("llama")
    prefix, blocks = blocks_of(model)
    layers = {n: m for n, m in select_layers(model, "all", IGNORE).items() if n.startswith(f"{prefix}.0.")}
    with collect_inputs(layers, InputNorms) as stats, torch.no_grad():
        model(input_ids=torch.randint(0, 97, (2, 8)))
    short = [[name.rsplit(".", 1)[-1] for name in group] for group in shared_inputs(stats)]
    assert short == [["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_sparsegpt_schedules_give_the_same_model(nm):
    """obs_schedule=shared (groups stacked, side by side on two threads) and per_layer (the reference's
    order) prune to the same masks and weights (up to float order), per-layer sparsities included."""
    windows = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(4))
    models = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for schedule in ("shared", "per_layer"):
            model = tiny_model("llama")
            ctx = context(model, "sparsegpt", windows, nm=nm, obs_schedule=schedule)
            ctx.layer_sparsity = {name: 0.3 + 0.05 * (i % 7) for i, name in enumerate(ctx.layers)} if nm is None else {}
            METHODS.get("sparsegpt").prune(ctx)
            models[schedule] = model
    finally:
        torch.set_num_threads(threads)
    for (name, a), b in zip(models["shared"].named_parameters(), models["per_layer"].parameters()):
        assert torch.equal(a == 0, b == 0), name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_sparsegpt_handles_dead_inputs_and_keeps_exact_nm():
    X = correlated_inputs(features=32)
    X[:, 5] = 0  # a dead input feature
    W = torch.randn(8, 32)
    pruned = W.clone()
    sparsegpt_layer(pruned, 2 * X.t() @ X / len(X), 0.5, (2, 4))
    assert torch.all(pruned[:, 5] == 0)
    live = (pruned != 0).reshape(8, -1, 4).sum(-1)
    assert torch.all(live[:, 1] <= 2) and torch.all(live[:, [0] + list(range(2, 8))] == 2)  # group 1 holds the dead input
    assert torch.isfinite(pruned).all()


def test_sparsegpt_raises_damping_instead_of_skipping_a_layer(caplog):
    W = torch.randn(4, 8)
    hessian = torch.diag(torch.tensor([1.0] * 7 + [-0.05]))  # indefinite at percdamp 0.01, fine at 0.1
    warnings = []
    pruned = W.clone()
    sparsegpt_layer(pruned, hessian, 0.5, None, percdamp=0.01, layer="L", warnings=warnings)
    assert warnings == [{"layer": "L", "percdamp": pytest.approx(0.1)}]
    assert int((pruned == 0).sum()) == 16
    with pytest.raises(PruneError, match="stays singular"):
        sparsegpt_layer(W.clone(), -torch.eye(8), 0.5, None, layer="L")


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "bert"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_every_family_prunes_to_exact_sparsity(arch, method):
    model = tiny_model(arch)
    windows = torch.randint(0, 97, (4, 16))
    ctx = context(model, method, windows, sparsity=0.5, nm=(2, 4))
    METHODS.get(method).prune(ctx)
    for module in ctx.layers.values():
        weight = weight_matrix(module)
        assert torch.all((weight != 0).reshape(weight.shape[0], -1, 4).sum(-1) == 2)  # exactly N kept per group of M
    calibration = ctx.stats["calibration"][method]
    assert len(calibration["block_seconds"]) == 2
    stages = calibration["stage_seconds"]
    assert set(stages) == {"calibrate", "prune", "rerun"} and all(value > 0 for value in stages.values())
    assert sum(stages.values()) <= sum(calibration["block_seconds"]) + 0.003  # within the blocks (rounded to ms)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_the_walk_prefaults_a_blocks_weights_before_reading_them(monkeypatch, method):
    """Each pruned block's target weights, exactly, are made writable (environment.prefault_for_writing) before the
    block's first pass reads them; OWL's dense pass writes nothing and prefaults nothing."""
    events = []
    monkeypatch.setattr(layerwise, "prefault_for_writing", lambda tensors: events.append(("prefault", {id(t) for t in tensors})) or True)
    model = tiny_model("llama")
    windows = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(3))
    ctx = context(model, method, windows)
    for module in ctx.layers.values():
        module.register_forward_pre_hook(lambda module, args: events.append(("read", id(module.weight))))
    ALLOCATIONS.get("owl")(ctx, OmegaConf.create({"owl": {"lambda": 0.1, "M": 3}}))
    assert events and not any(kind == "prefault" for kind, _ in events)
    events.clear()
    METHODS.get(method).prune(ctx)
    prefaults = [(position, ids) for position, (kind, ids) in enumerate(events) if kind == "prefault"]
    for index, (position, ids) in enumerate(prefaults):
        block = {id(m.weight) for name, m in ctx.layers.items() if f".layers.{index}." in name}
        assert ids == block
        assert not any(kind == "read" and weight in block for kind, weight in events[:position])
    assert len(prefaults) == 2


def test_pruned_block_outputs_feed_the_next_block():
    """Batching windows through blocks gives the same result as one window at a time."""
    windows = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(3))
    one, many = tiny_model("llama").double(), tiny_model("llama").double()
    METHODS.get("wanda").prune(context(one, "wanda", windows, calibration_batch_size=1))
    METHODS.get("wanda").prune(context(many, "wanda", windows))
    for (name, a), b in zip(one.named_parameters(), many.parameters()):
        assert torch.equal(a == 0, b == 0), name


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_the_walk_ends_at_the_last_block_with_targets(method):
    """The last pruned block is run once (its statistics pass, cut short before down_proj) and never
    re-run, blocks after it not at all; the masks equal those of the whole model's walk."""
    windows = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(5))
    whole, first = tiny_model("llama"), tiny_model("llama")
    METHODS.get(method).prune(context(whole, method, windows))
    ctx = context(first, method, windows)
    ctx.layers = {name: module for name, module in ctx.layers.items() if ".layers.0." in name}
    _, blocks = blocks_of(first)
    calls = {0: 0, 1: 0}
    for index, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda module, args, index=index: calls.__setitem__(index, calls[index] + 1))
        block.mlp.down_proj.register_forward_hook(lambda module, args, output, index=index: calls.__setitem__(("down", index), 1))
    METHODS.get(method).prune(ctx)
    assert calls == {0: 2, 1: 0}  # block 0 entered by the model (its inputs caught) and by its statistics pass; no down_proj ran
    for name, module in ctx.layers.items():
        assert torch.equal(module.weight == 0, whole.get_submodule(name).weight == 0), name
    assert all(torch.count_nonzero(p) == p.numel() for n, p in first.named_parameters() if ".layers.1." in n and p.dim() == 2)


def test_unknown_block_layout_names_the_class_and_the_fix():
    model = tiny_model("llama")
    model.config.model_type = "mystery"
    with pytest.raises(PruneError, match=r"LlamaForCausalLM \(model_type 'mystery'\).*BLOCK_PATHS"):
        blocks_of(model)


def test_layers_outside_the_blocks_are_refused():
    model = tiny_model("llama")
    layers = select_layers(model, "all", [])  # includes lm_head
    ctx = PruneContext(model, layers, 0.5, None, OmegaConf.create({"name": "wanda"}), torch.device("cpu"), calibration=torch.randint(0, 97, (2, 8)))
    with pytest.raises(PruneError, match="lm_head is outside the transformer blocks"):
        METHODS.get("wanda").prune(ctx)


def test_owl_keeps_the_mean_and_favours_outlier_blocks():
    sparsities = owl_block_sparsities([0.1, 0.5, 0.3, 0.9], sparsity=0.6, lam=0.08)
    assert sum(sparsities) / 4 == pytest.approx(0.6)
    assert max(sparsities) - min(sparsities) == pytest.approx(0.16)
    assert sparsities[3] == min(sparsities) and sparsities[0] == max(sparsities)
    with pytest.raises(PruneError, match="lower owl.lambda"):
        owl_block_sparsities([0.0, 1.0], sparsity=0.05, lam=0.2)


def test_owl_allocation_on_a_model():
    model = tiny_model("llama")
    ctx = context(model, "wanda", torch.randint(0, 97, (4, 16)), sparsity=0.5)
    ctx.layer_sparsity = ALLOCATIONS.get("owl")(ctx, OmegaConf.create({"owl": {"lambda": 0.1, "M": 3}}))
    assert set(ctx.layer_sparsity) == set(ctx.layers)
    assert sum(ctx.stats["owl"]["block_sparsity"]) / 2 == pytest.approx(0.5)
    dense_pass = ctx.stats["calibration"]["owl"]["stage_seconds"]
    assert dense_pass["calibrate"] > 0 and dense_pass["rerun"] == 0  # its statistics pass's outputs feed the next block
    with pytest.raises(PruneError, match="N:M"):
        ALLOCATIONS.get("owl")(context(model, "wanda", torch.randint(0, 97, (2, 8)), nm=(2, 4)), OmegaConf.create({"owl": {"lambda": 0.1, "M": 3}}))


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("windows, batch_size", [(4, 8), (5, 2)])
def test_the_compute_floor_counts_the_block_passes_flops(tmp_path, corpus, method, windows, batch_size):
    """tiny_llama (hidden 64, FFN 128, 4 heads of 16, 2 KV heads, 2 blocks), windows of 32 tokens, in one batch or
    in batches of 2 (the last one short: the counted first batch's FLOPs are scaled to all windows): per window, a
    full block forward is 2 x 32 tokens x (64*64 + 2*64*32 + 64*64 + 2*64*128 + 128*64) for the layers (on CPU
    oneDNN's linear, counted like ``mm``) plus 4 x h s^2 d = 4 x 4 x 32^2 x 16 for attention; the statistics pass
    stops before down_proj runs."""
    block = windows * (2 * 32 * 36864 + 4 * 4 * 32**2 * 16)
    calibrate = block - windows * 2 * 32 * 128 * 64
    # SparseGPT: X^T X once per distinct input (q/k/v, o, gate/up: 64 features; down: 128), its upper triangle in
    # 4 bands of rows (band [a, a+d/4) times columns [a, d)), and per layer (out, in) the rank-1 update of column i
    # over the in-1-i later ones: out x in x (in-1) FLOPs (its lazy batch updates multiply nothing here: every
    # layer has <= 128 = blocksize input columns, one column block)
    def upper_bands(d: int) -> int:
        return sum(d // 4 * (d - start) for start in range(0, d, d // 4))

    layers = [(64, 64), (32, 64), (32, 64), (64, 64), (128, 64), (128, 64), (64, 128)]
    hessians = (windows * 2 * 32 * (3 * upper_bands(64) + upper_bands(128)) + sum(o * i * (i - 1) for o, i in layers)
                if method == "sparsegpt" else 0)
    result = run_prune("run", *tiny_cli_args(corpus), f"method={method}", "eval=none", f"data.nsamples={windows}",
                       f"method.calibration_batch_size={batch_size}", cwd=tmp_path)
    _, metrics = finished_run(result, tmp_path)
    floor = metrics["floor"]
    # two pruned blocks: a statistics pass each, the re-run of block 0 only (the last block's outputs feed nothing)
    assert floor["flops"] == 2 * (calibrate + hessians) + block
    tokens = min(windows, batch_size) * 32
    assert floor["shapes"] == [[tokens, 64, 32], [tokens, 64, 64], [tokens, 64, 128], [tokens, 128, 64]]
    assert floor["matmul_gflops"] > 0 and floor["floor_s"] == pytest.approx(floor["flops"] / (floor["matmul_gflops"] * 1e9), rel=0.01)
    assert metrics["prune_over_floor"] == pytest.approx(metrics["prune_s"] / floor["floor_s"]) and metrics["prune_over_floor"] > 1


@settings(max_examples=40, deadline=None)
@given(features=st.integers(1, 23), batches=st.lists(st.integers(1, 9), min_size=1, max_size=4), seed=st.integers(0, 2**16))
def test_input_statistics_equal_the_float64_formulas(features, batches, seed):
    """For any width and any split of the tokens into batches: the Hessian (upper-triangle bands, mirrored)
    is ``2/n X^T X`` and exactly symmetric; Wanda's norms are ``sqrt(sum_t x_tj^2)``."""
    generator = torch.Generator().manual_seed(seed)
    xs = [torch.randn(rows, features, generator=generator) for rows in batches]
    hessian, norms = Hessian(features, torch.device("cpu")), InputNorms(features, torch.device("cpu"))
    for x in xs:
        hessian.add(x)
        norms.add(x)
    X = torch.cat(xs).double()
    H = hessian.hessian()
    assert torch.equal(H, H.t())
    torch.testing.assert_close(H.double(), 2 * X.t() @ X / X.shape[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norms.norms().double(), X.pow(2).sum(0).sqrt(), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="after hessian"):
        hessian.add(xs[0])


@pytest.mark.parametrize("features, tokens", [(1, 3), (7, 5), (64, 16), (97, 40)])
def test_hessian_band_flops_are_what_the_floor_counter_counts_for_one_add(features, tokens):
    """``Hessian.band_flops`` (the scripts' count of an add) against the floor's own counter over that add."""
    hessian = Hessian(features, torch.device("cpu"))
    x = torch.randn(tokens, features)
    with FlopCounterMode(display=False, custom_mapping=counted_rules()) as counter:
        hessian.add(x)
    assert counter.get_total_flops() == hessian.band_flops(tokens) > 0
