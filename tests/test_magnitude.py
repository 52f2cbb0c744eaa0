"""Magnitude pruning on tiny models of every family: exact sparsity, scope, ignore, N:M."""

import pytest
import torch
from omegaconf import OmegaConf

from prunecli.errors import PruneError
from prunecli.methods import METHODS, PruneContext
from prunecli.methods.masks import prune_count
from prunecli.methods.targets import select_layers, weight_matrix
from prunecli.sparsity import sparsity_summary
from tests.conftest import tiny_model

IGNORE = ["lm_head", "embed", "wte", "wpe", "pooler"]


def quantize_(model, levels=8):
    """Round weights to a few magnitudes, like the 4-bit-derived default model: many ties."""
    with torch.no_grad():
        for parameter in model.parameters():
            scale = parameter.abs().max().clamp_min(1e-8)
            magnitude = torch.ceil(parameter.abs() / scale * levels).clamp_min(1) / levels * scale
            parameter.copy_(torch.where(parameter < 0, -magnitude, magnitude))  # no zeros, many ties


def prune(model, sparsity, scope="per_layer", nm=None, targets="all", ignore=IGNORE):
    layers = select_layers(model, targets, ignore)
    ctx = PruneContext(model, layers, sparsity, nm, OmegaConf.create({"name": "magnitude", "scope": scope}), torch.device("cpu"))
    METHODS.get("magnitude").prune(ctx)
    return layers


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.7])
def test_per_layer_sparsity_is_exact_with_ties(any_tiny_model, sparsity):
    _, model = any_tiny_model
    quantize_(model)
    layers = prune(model, sparsity)
    for module in layers.values():
        weight = weight_matrix(module)
        assert int((weight == 0).sum()) == prune_count(weight.numel(), sparsity)


def test_global_scope_hits_the_overall_target_exactly(any_tiny_model):
    _, model = any_tiny_model
    quantize_(model, levels=4)
    layers = prune(model, 0.6, scope="global")
    summary, table = sparsity_summary(model, layers)
    total = sum(row["numel"] for row in table)
    assert sum(row["zeros"] for row in table) == prune_count(total, 0.6)
    assert len({round(row["sparsity"], 3) for row in table}) > 1  # layers differ under one threshold


def test_global_scope_removes_the_globally_smallest():
    model = tiny_model("llama")
    layers = select_layers(model, "all", IGNORE)
    with torch.no_grad():
        for index, module in enumerate(layers.values()):
            module.weight.fill_(float(index + 1))  # layer i holds only the value i + 1
    prune(model, 0.3, scope="global")
    sizes = [m.weight.numel() for m in layers.values()]
    budget = prune_count(sum(sizes), 0.3)
    for module, size in zip(layers.values(), sizes):
        zeros = int((module.weight == 0).sum())
        assert zeros == min(size, budget)
        budget -= zeros


def test_ignore_is_respected():
    model = tiny_model("llama")
    before = {n: p.clone() for n, p in model.named_parameters()}
    layers = prune(model, 0.5, ignore=IGNORE + ["mlp"])
    assert layers and not any("mlp" in name for name in layers)
    for name, parameter in model.named_parameters():
        if "mlp" in name or "embed" in name or "lm_head" in name:
            assert torch.equal(parameter, before[name]), name


def test_targets_presets_select_the_right_layers():
    model = tiny_model("llama")
    attention = select_layers(model, "attention", IGNORE)
    ffn = select_layers(model, "ffn", IGNORE)
    assert all("self_attn" in n for n in attention) and len(attention) == 8
    assert all("mlp" in n for n in ffn) and len(ffn) == 6
    bert_ffn = select_layers(tiny_model("bert"), "ffn", IGNORE)
    assert sorted({n.split(".", 3)[-1] for n in bert_ffn}) == ["intermediate.dense", "output.dense"]
    with pytest.raises(PruneError, match="match no"):
        select_layers(model, "encoder", IGNORE)
    with pytest.raises(PruneError, match="unknown targets preset"):
        select_layers(model, "everything", IGNORE)


def test_gpt2_conv1d_is_pruned_in_output_input_orientation():
    model = tiny_model("gpt2")
    layers = prune(model, 0.5, nm=(2, 4))
    for module in layers.values():
        weight = weight_matrix(module)  # (out, in) view of the (in, out) Conv1D weight
        assert weight.shape == (module.nf, module.weight.shape[0])
        groups = (weight != 0).reshape(weight.shape[0], -1, 4).sum(-1)
        assert torch.all(groups == 2)


def test_nm_magnitude_keeps_largest_two_of_four():
    model = tiny_model("llama")
    original = {n: weight_matrix(m).clone() for n, m in select_layers(model, "all", IGNORE).items()}
    layers = prune(model, 0.5, nm=(2, 4))
    for name, module in layers.items():
        pruned = weight_matrix(module).reshape(-1, 4)
        source = original[name].abs().reshape(-1, 4)
        kept_min = source.masked_fill(pruned == 0, float("inf")).min(-1).values
        dropped_max = source.masked_fill(pruned != 0, float("-inf")).max(-1).values
        assert torch.all(kept_min >= dropped_max)
