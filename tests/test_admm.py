"""``method=admm`` and ``update=admm``: ADMM mask selection and weight update (Boža 2024) on tiny layers and a tiny model.

Oracles: the objective ``f(W') = tr((W' - W) H (W' - W)^T)`` computed directly, SparseGPT's
result on the same mask, the dense weight at zero sparsity, and the exact zero count.
"""

from __future__ import annotations

import csv

import pytest
import torch
from omegaconf import OmegaConf

from prunecli.errors import PruneError
from prunecli.methods import METHODS, PruneContext
from prunecli.methods.admm import ADMMOptions, ADMMUpdateOptions, admm_prune, admm_refit
from prunecli.methods.update import UPDATES, objective, prune_and_refit, relative_error
from prunecli.methods.sparsegpt import sparsegpt_layer
from prunecli.methods.targets import select_layers, weight_matrix
from tests.conftest import composition_error, finished_run, run_prune, tiny_cli_args, tiny_model

CPU = torch.device("cpu")


def layer(seed=0, rows=32, columns=64, tokens=512):
    """A weight and the Hessian of correlated inputs (full rank)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, columns, generator=g) @ torch.randn(columns, columns, generator=g) * 0.3 + torch.randn(tokens, columns, generator=g)
    return torch.randn(rows, columns, generator=g), 2 / tokens * X.T @ X


@pytest.mark.parametrize("sparsity, nm", [(0.5, None), (0.7, None), (0.5, (2, 4))])
def test_on_a_fixed_mask_the_objective_falls_every_iteration_and_ends_below_sparsegpt(sparsity, nm):
    W, H = layer()
    reference = W.clone()
    sparsegpt_layer(reference, H, sparsity, nm, 128, 0.01)
    keep = reference != 0
    trace: list[float] = []
    updated, residual = admm_refit(W, H, keep.clone(), ADMMUpdateOptions(iterations=30, percdamp=0.01, refine_steps=10), trace=trace)
    assert len(trace) == 40 and all(later <= earlier * (1 + 1e-6) for earlier, later in zip(trace, trace[1:]))
    assert objective(W, updated, H) < objective(W, reference, H)  # re-fitted better than OBS on the same mask
    assert torch.all(updated[~keep] == 0)  # the mask is exactly preserved
    assert residual < 1e-3


@pytest.mark.parametrize("sparsity, nm", [(0.5, None), (0.7, None), (0.5, (2, 4))])
def test_its_own_mask_has_the_exact_sparsity_and_beats_sparsegpt(sparsity, nm):
    W, H = layer(seed=1)
    updated, keep, _ = admm_prune(W, H, sparsity, nm, ADMMOptions())
    assert torch.equal(updated != 0, keep)
    if nm is None:
        assert (~keep).sum(1).tolist() == [int(sparsity * 64)] * 32  # floor(s * columns) per row
    else:
        assert torch.all(keep.reshape(32, -1, 4).sum(-1) == 2)  # exactly N of every M
    reference = W.clone()
    sparsegpt_layer(reference, H, sparsity, nm, 128, 0.01)
    assert objective(W, updated, H) < objective(W, reference, H)


def test_zero_sparsity_with_a_full_rank_hessian_returns_the_weight():
    W, H = layer(seed=2)
    updated, keep, _ = admm_prune(W, H, 0.0, None, ADMMOptions())
    assert keep.all()
    torch.testing.assert_close(updated, W, atol=1e-4, rtol=1e-4)
    assert relative_error(W, updated, H) < 1e-5


def test_dead_inputs_are_zeroed_and_nothing_is_nan():
    W, H = layer(seed=3)
    H[:, 5] = H[5, :] = 0  # an input that never fires
    updated, _, _ = admm_prune(W, H, 0.5, None, ADMMOptions())
    assert torch.isfinite(updated).all() and torch.all(updated[:, 5] == 0)


def test_the_method_records_each_layers_error_before_and_after_the_update():
    model = tiny_model("llama")
    layers = select_layers(model, "all", ["lm_head", "embed"])
    windows = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(0))
    ctx = PruneContext(model, layers, 0.5, None, OmegaConf.create({"name": "admm", "iterations": 8, "mask_steps": 4}), CPU, calibration=windows)
    METHODS.get("admm").prune(ctx)
    errors = ctx.stats["layer_errors"]
    assert set(errors) == set(layers)
    assert all(e["error_after"] < e["error_before"] for e in errors.values())
    for module in layers.values():
        weight = weight_matrix(module)
        assert (weight == 0).sum(1).tolist() == [weight.shape[1] // 2] * weight.shape[0]
    assert ctx.stats["admm"]["error_after_mean"] < ctx.stats["admm"]["error_before_mean"]


@pytest.mark.parametrize("options, message", [
    ({"iterations": 0}, "method.iterations must be a positive integer (got 0)"),
    ({"mask_steps": 30}, "method.mask_steps=30 exceeds method.iterations=20"),
    ({"rho": 0}, "method.rho must be a number > 0 (got 0)"),
    ({"refine_steps": -1}, "method.refine_steps must be an integer >= 0 (got -1)"),
])
def test_bad_options_are_one_line(options, message):
    with pytest.raises(PruneError) as err:
        METHODS.get("admm").parse({"name": "admm", **options})
    assert str(err.value) == message


def test_cli_admm_run_writes_the_layer_errors_into_layers_csv(tmp_path, corpus):
    result = run_prune("run", *tiny_cli_args(corpus), "method=admm", "pattern=2:4", "sparsity=0.5", "method.iterations=6", "method.mask_steps=3", cwd=tmp_path)
    run_dir, metrics = finished_run(result, tmp_path)
    rows = list(csv.DictReader((run_dir / "layers.csv").open()))
    assert rows and all(float(r["error_after"]) < float(r["error_before"]) for r in rows)
    assert metrics["sparsity_actual"] == pytest.approx(0.5) and metrics["admm"]["iterations"] == 6


@pytest.mark.parametrize("method, sparsity, nm", [("magnitude", 0.5, None), ("wanda", 0.5, (2, 4)), ("sparsegpt", 0.7, None)])
def test_update_refits_any_methods_mask_exactly_and_lowers_every_layers_error(method, sparsity, nm):
    """Oracle: the same method run alone on a copy of the model; its zeros are the update's zeros, exactly."""
    windows = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(0))

    def context(model):
        layers = select_layers(model, "all", ["lm_head", "embed"])
        return PruneContext(model, layers, sparsity, nm, OmegaConf.create({"name": method}), CPU, calibration=windows)

    alone, refitted = context(tiny_model("llama")), context(tiny_model("llama"))
    METHODS.get(method).prune(alone)
    prune_and_refit(refitted, METHODS.get(method), UPDATES.get("admm"), ADMMUpdateOptions())
    for name, module in refitted.layers.items():
        mine, theirs = weight_matrix(module), weight_matrix(alone.layers[name])
        assert torch.equal(mine == 0, theirs == 0), name  # the method's mask, zero for zero
        assert not torch.equal(mine, theirs)  # ... with other weights on it
        if nm is not None:
            assert torch.all((mine != 0).reshape(mine.shape[0], -1, nm[1]).sum(-1) == nm[0])
    errors = refitted.stats["layer_errors"]
    assert set(errors) == set(refitted.layers)
    assert all(e["error_after"] < e["error_before"] for e in errors.values())
    assert refitted.stats["admm"]["iterations"] == 20


def test_update_on_a_dense_mask_returns_the_weights():
    """At zero sparsity the method keeps every weight: the re-fit must give the dense weights back."""
    W, H = layer(seed=4)
    updated, _ = admm_refit(W, H, torch.ones_like(W, dtype=torch.bool), ADMMUpdateOptions())
    torch.testing.assert_close(updated, W, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("overrides, message", [
    (["method=ffn", "update=admm"], "update=admm re-fits the weights an element-wise mask keeps; it combines with method=magnitude|sparsegpt|wanda (got method=ffn)"),
    (["method=admm", "update=admm"], "update=admm re-fits the weights an element-wise mask keeps; it combines with method=magnitude|sparsegpt|wanda (got method=admm)"),
    (["method=wanda", "update=admm", "update.iterations=0"], "update.iterations must be a positive integer (got 0)"),
    (["method=wanda", "update=admm", "+update.mask_steps=3"], "unknown key update.mask_steps (its keys: name, iterations, rho, percdamp, refine_steps)"),
    (["method=wanda", "update=admm", "schedule=gradual", "finetune=lm"], "update=admm re-fits the weights of a one-shot pruning: use schedule=oneshot analysis=none"),
])
def test_bad_update_settings_are_one_line(overrides, message):
    assert composition_error(*overrides) == message


def test_cli_update_run_records_the_update_and_both_errors(tmp_path, corpus):
    result = run_prune("run", *tiny_cli_args(corpus), "method=wanda", "pattern=2:4", "sparsity=0.5", "update=admm",
                       "update.iterations=6", cwd=tmp_path)
    run_dir, metrics = finished_run(result, tmp_path)
    rows = list(csv.DictReader((run_dir / "layers.csv").open()))
    assert rows and all(float(r["error_after"]) < float(r["error_before"]) for r in rows)
    assert metrics["admm"]["iterations"] == 6 and metrics["admm"]["error_after_mean"] < metrics["admm"]["error_before_mean"]
    assert next(csv.DictReader((run_dir / "results.csv").open()))["update"] == "admm"
    assert metrics["sparsity_actual"] == pytest.approx(0.5)
