"""Structured pruning (heads, FFN neurons, blocks) that physically shrinks the model.

The reference for every removal is the same pruning applied as a mask (the chosen rows /
columns / heads zeroed, or the blocks skipped): the shrunk model must give the same logits.
"""

import copy
import csv
import dataclasses
import json

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from prunecli.errors import PruneError
from prunecli.methods import METHODS, PruneContext
from prunecli.models.hub import from_pretrained
from prunecli.models.layout import blocks_of
from prunecli.models.tiny import tiny_tokenizer
from prunecli.structured.groups import head_counts, family_of
from prunecli.structured.methods import apply, check_model, plan
from tests.conftest import REPO, TINY_CONFIGS, finished_run, run_prune, tiny_cli_args, tiny_model

WINDOWS = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(0))
HIDDEN, HEAD_DIM, FFN = 64, 16, {"llama": 128, "gpt2": 256, "opt": 128, "bert": 128}
# Per removed unit: parameters of q rows + o columns, of k + v rows, of an FFN neuron (biases included).
HAS_BIAS = {"llama": False, "gpt2": True, "opt": True, "bert": True}
FFN_INPUTS = {"llama": 2, "gpt2": 1, "opt": 1, "bert": 1}


def context(model, sparsity=0.5, windows=WINDOWS, **options):
    opts = OmegaConf.create({"name": "heads", "calibration_batch_size": 2, **options})
    return PruneContext(model, {}, sparsity, None, opts, torch.device("cpu"), calibration=windows)


def logits(model, x=WINDOWS):
    with torch.no_grad():
        out = model(input_ids=x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def masked_and_removed(arch, kind, sparsity=0.5, model=None, **options):
    model = model if model is not None else tiny_model(arch)
    chosen, _ = plan(context(model, sparsity, **options), kind)
    masked, removed = copy.deepcopy(model), copy.deepcopy(model)
    apply(masked, chosen, physically=False)
    apply(removed, chosen, physically=True)
    return model, chosen, masked, removed


def expected_drop(arch, kind, chosen):
    """Parameters a removal must free, from the counts of removed heads / neurons and the shapes."""
    bias = HAS_BIAS[arch]
    if kind == "ffn":
        neurons = sum(len(r) for r in chosen.removed)
        return neurons * (FFN_INPUTS[arch] * (HIDDEN + bias) + HIDDEN)
    q = sum(len(g.query_heads[r].unique()) for g, r in zip(chosen.groups, chosen.removed))
    kv = sum(len(g.kv_heads[r].unique()) for g, r in zip(chosen.groups, chosen.removed))
    return q * HEAD_DIM * (HIDDEN + bias + HIDDEN) + kv * 2 * HEAD_DIM * (HIDDEN + bias)


CASES = [
    ("llama", "heads", dict(gqa="kv_groups")),
    ("llama", "heads", dict(gqa="query_heads")),
    ("llama", "heads", dict(gqa="kv_groups", criterion="activation", bias_compensation=True)),
    ("llama", "heads", dict(gqa="query_heads", criterion="taylor", allocation="global", min_heads_per_layer=1)),
    ("gpt2", "heads", dict(criterion="entropy")),
    ("gpt2", "heads", dict(criterion="confidence", allocation="global", min_heads_per_layer=1, bias_compensation=True)),
    ("opt", "heads", dict(criterion="l1")),
    ("opt", "heads", dict(criterion="taylor", bias_compensation=True)),
    ("bert", "heads", dict(criterion="l2")),
    ("bert", "heads", dict(criterion="activation", allocation="global", min_heads_per_layer=1)),
    ("llama", "ffn", dict(criterion="l2")),
    ("llama", "ffn", dict(criterion="activation", allocation="global", bias_compensation=True)),
    ("gpt2", "ffn", dict(criterion="taylor")),
    ("gpt2", "ffn", dict(criterion="l1", bias_compensation=True)),
    ("opt", "ffn", dict(criterion="activation")),
    ("opt", "ffn", dict(criterion="l2", allocation="global", bias_compensation=True)),
    ("bert", "ffn", dict(criterion="l1")),
    ("bert", "ffn", dict(criterion="activation", bias_compensation=True)),
    ("llama", "ffn", dict(criterion="fluctuation", bias_compensation=True)),
    ("gpt2", "heads", dict(criterion="fluctuation")),
]


@pytest.mark.parametrize("arch, kind, options", CASES, ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()))
def test_removed_model_equals_masked_model_and_frees_the_expected_parameters(arch, kind, options):
    model, chosen, masked, removed = masked_and_removed(arch, kind, **options)
    assert any(len(r) for r in chosen.removed)
    torch.testing.assert_close(logits(removed), logits(masked), atol=1e-5, rtol=0)
    assert not torch.allclose(logits(removed), logits(model), atol=1e-3)  # something was pruned
    added_biases = sum(HIDDEN for (_, path) in chosen.bias if HAS_BIAS[arch] is False)  # FLAP creates them
    assert n_params(model) - n_params(removed) == expected_drop(arch, kind, chosen) - added_biases
    assert n_params(masked) == n_params(model) + added_biases


def test_gqa_modes_keep_the_head_layout_consistent():
    _, _, _, kv = masked_and_removed("llama", "heads", gqa="kv_groups")
    _, _, _, qh = masked_and_removed("llama", "heads", gqa="query_heads")
    family = family_of(kv)
    assert [head_counts(family, b)[:2] for b in blocks_of(kv)[1]] == [(2, 1), (2, 1)]
    assert [head_counts(family, b)[:2] for b in blocks_of(qh)[1]] == [(2, 2), (2, 2)]
    assert [b.self_attn.num_key_value_groups for b in blocks_of(qh)[1]] == [1, 1]
    assert (kv.config.num_attention_heads, kv.config.num_key_value_heads, kv.config.head_dim) == (2, 1, 16)


def test_per_layer_removes_the_lowest_units_of_each_layer():
    model = tiny_model("opt")
    chosen, _ = plan(context(model, 0.5, criterion="l2"), "ffn")
    for block, removed in zip(blocks_of(model)[1], chosen.removed):
        norms = (block.fc1.weight.pow(2).sum(1) + block.fc2.weight.pow(2).sum(0)).sqrt()
        assert torch.equal(removed, norms.argsort(stable=True)[:64].sort().values)


def test_bias_compensation_moves_the_mean_of_removed_inputs_into_the_bias():
    model = tiny_model("llama")
    chosen, evidence = plan(context(model, 0.5, criterion="l2", bias_compensation=True), "ffn")
    down = blocks_of(model)[1][0].mlp.down_proj
    columns = chosen.removed[0]
    mean = evidence.out_moments[(0, "mlp.down_proj")].mean()
    torch.testing.assert_close(chosen.bias[(0, "mlp.down_proj")], (down.weight[:, columns].double() @ mean[columns]).float())


def down_proj_inputs(model):
    """The inputs of every block's down_proj on WINDOWS, unpruned model: {block: (tokens, neurons)}."""
    inputs = {}
    hooks = [b.mlp.down_proj.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0].reshape(-1, a[0].shape[-1])))
             for i, b in enumerate(blocks_of(model)[1])]
    logits(model)
    for hook in hooks:
        hook.remove()
    return inputs


def lowest(score, sparsity):
    return score.argsort(stable=True)[: int(sparsity * len(score))].sort().values


def test_activation_removes_the_neurons_of_least_input_norm_times_column_norm():
    """Wanda-style: ||X_j||_2 * ||W_down[:, j]||_2 over all calibration tokens."""
    model = tiny_model("llama")
    inputs = down_proj_inputs(model)
    chosen, _ = plan(context(model, 0.25, criterion="activation"), "ffn")
    for i, (block, removed) in enumerate(zip(blocks_of(model)[1], chosen.removed)):
        score = inputs[i].double().norm(dim=0) * block.mlp.down_proj.weight.double().norm(dim=0)
        assert torch.equal(removed, lowest(score, 0.25))


def test_fluctuation_removes_the_neurons_of_least_input_variance_times_squared_column_norm():
    """FLAP's WIFV: Var_t(x_j) * ||W_down[:, j]||^2, x the down_proj inputs of the unpruned model."""
    model = tiny_model("llama")
    inputs = down_proj_inputs(model)
    chosen, _ = plan(context(model, 0.25, criterion="fluctuation"), "ffn")
    for i, (block, removed) in enumerate(zip(blocks_of(model)[1], chosen.removed)):
        score = inputs[i].double().var(0, unbiased=False) * block.mlp.down_proj.weight.double().pow(2).sum(0)
        assert torch.equal(removed, lowest(score, 0.25))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_taylor_removes_the_neurons_of_least_summed_first_order_term(arch):
    """LLM-Pruner, element-wise first order: sum over a neuron's weights of |dL/dw * w|, L the mean LM loss."""
    model = tiny_model(arch)
    reference = copy.deepcopy(model)
    reference.zero_grad()
    reference(input_ids=WINDOWS, labels=WINDOWS).loss.backward()
    chosen, _ = plan(context(model, 0.25, criterion="taylor"), "ffn")
    for ref, removed in zip(blocks_of(reference)[1], chosen.removed):
        if arch == "llama":  # gate/up rows, down column
            term = lambda layer: (layer.weight.grad * layer.weight).abs().detach().double()  # noqa: E731
            score = term(ref.mlp.gate_proj).sum(1) + term(ref.mlp.up_proj).sum(1) + term(ref.mlp.down_proj).sum(0)
        else:  # Conv1D stores (in, out): c_fc column i, c_proj row i
            term = lambda layer: (layer.weight.grad * layer.weight).abs().detach().double()  # noqa: E731
            score = term(ref.mlp.c_fc).sum(0) + term(ref.mlp.c_proj).sum(1)
        assert torch.equal(removed, lowest(score, 0.25))
    assert all(p.grad is None and p.requires_grad for p in model.parameters())  # the pruned model is left as it was


def skip_blocks(model, indices):
    """The mask twin of removing blocks: each skipped block returns its input."""
    def passthrough(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    blocks = blocks_of(model)[1]
    return [blocks[i].register_forward_hook(passthrough, with_kwargs=True) for i in indices]


def deeper(arch):
    config = dict(TINY_CONFIGS[arch])
    config["n_layer" if arch == "gpt2" else "num_hidden_layers"] = 4
    from prunecli.models.tiny import build_tiny

    return build_tiny(arch, config, 0)[0].eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "bert"])
def test_removed_blocks_equal_skipped_blocks(arch):
    model = deeper(arch)
    removed = copy.deepcopy(model)
    ctx = context(removed, 0.5, name="layers", criterion="block_influence")
    METHODS.get("layers").prune(ctx)
    doomed = ctx.stats["structured"]["removed_blocks"]
    influence = torch.tensor(ctx.stats["structured"]["block_influence"])
    assert doomed == sorted(influence.argsort(stable=True)[:2].tolist())
    skipped = copy.deepcopy(model)
    skip_blocks(skipped, doomed)
    torch.testing.assert_close(logits(removed), logits(skipped), atol=1e-5, rtol=0)
    per_block = n_params(blocks_of(model)[1][0])
    assert n_params(model) - n_params(removed) == 2 * per_block
    assert removed.config.num_hidden_layers == 2 and len(blocks_of(removed)[1]) == 2
    for index, block in enumerate(blocks_of(removed)[1]):
        assert all(m.layer_idx == index for m in block.modules() if isinstance(getattr(m, "layer_idx", None), int))


def test_explicit_layers_to_remove_and_generation_with_cache():
    model = deeper("llama")
    METHODS.get("layers").prune(context(model, 0.0, windows=None, name="layers", layers_to_remove=[0, 2]))
    assert [b.self_attn.layer_idx for b in blocks_of(model)[1]] == [0, 1]
    out = model.generate(WINDOWS[:1, :4], max_new_tokens=3, do_sample=False)  # the KV cache uses the new indices
    assert out.shape == (1, 7)


def test_qwen2_heads_with_qkv_biases_and_ffn(tmp_path):
    from transformers import AutoModelForCausalLM

    from prunecli.models.tiny import build_tiny

    model = build_tiny("qwen2", dict(TINY_CONFIGS["llama"]), 0)[0].eval()
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    for kind in ("heads", "ffn"):
        model, chosen, masked, removed = masked_and_removed("qwen2", kind, model=model)
        torch.testing.assert_close(logits(removed), logits(masked), atol=1e-5, rtol=0)
        model = removed
    assert (model.config.num_attention_heads, model.config.num_key_value_heads, model.config.head_dim) == (2, 1, 16)
    folder = tmp_path / "qwen2"
    model.save_pretrained(folder)
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    torch.testing.assert_close(logits(plain), logits(model), atol=1e-5, rtol=0)


def save_and_reload(model, tmp_path, task="causal_lm"):
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    reloaded, _, _ = from_pretrained(str(folder), task)
    return folder, reloaded.eval()


@pytest.mark.parametrize("arch, kind, options, uniform", [
    ("llama", "heads", dict(gqa="kv_groups"), True),
    ("llama", "ffn", dict(), True),
    ("gpt2", "ffn", dict(), True),
    ("llama", "ffn", dict(allocation="global", sparsity=0.4), False),
    ("llama", "heads", dict(gqa="query_heads", allocation="global", sparsity=0.25), False),
    ("llama", "heads", dict(gqa="kv_groups", allocation="global", sparsity=0.25), False),
    ("llama", "heads", dict(criterion="activation", bias_compensation=True), False),  # added o_proj biases
    ("gpt2", "heads", dict(), False),
    ("opt", "heads", dict(allocation="global", min_heads_per_layer=1), False),
    ("bert", "heads", dict(), False),
])
def test_saved_shrunk_model_reloads_with_identical_logits(tmp_path, arch, kind, options, uniform):
    model, _, _, removed = masked_and_removed(arch, kind, **options)
    if kind == "ffn" and options.get("allocation") == "global":
        assert len(set(w.mlp.down_proj.in_features for w in blocks_of(removed)[1])) > 1
    folder, reloaded = save_and_reload(removed, tmp_path, "encoder" if arch == "bert" else "causal_lm")
    torch.testing.assert_close(logits(reloaded), logits(removed), atol=1e-5, rtol=0)
    assert ("prunecli_structure" not in json.loads((folder / "config.json").read_text())) == uniform
    if uniform:
        from transformers import AutoModelForCausalLM

        plain = AutoModelForCausalLM.from_pretrained(folder).eval()
        torch.testing.assert_close(logits(plain), logits(removed), atol=1e-5, rtol=0)


def test_removed_blocks_reload_with_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    model = deeper("llama")
    METHODS.get("layers").prune(context(model, 0.0, windows=None, name="layers", layers_to_remove=[1]))
    folder, reloaded = save_and_reload(model, tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    torch.testing.assert_close(logits(plain), logits(model), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(reloaded), logits(model), atol=1e-5, rtol=0)


def starve_first_ffn(model):
    with torch.no_grad():
        for layer in (model.model.layers[0].mlp.gate_proj, model.model.layers[0].mlp.up_proj, model.model.layers[0].mlp.down_proj):
            layer.weight.mul_(1e-3)
    return model


def test_a_layer_emptied_by_global_ranking_is_refused_unless_allowed(tmp_path):
    with pytest.raises(PruneError, match="would remove every FFN neuron of layer 0.*allow_empty_layers=true"):
        plan(context(starve_first_ffn(tiny_model("llama")), 0.5, allocation="global"), "ffn")
    model, _, masked, removed = masked_and_removed("llama", "ffn", model=starve_first_ffn(tiny_model("llama")),
                                                   allocation="global", allow_empty_layers=True)
    assert removed.model.layers[0].mlp.down_proj.in_features == 0
    torch.testing.assert_close(logits(removed), logits(masked), atol=1e-5, rtol=0)
    _, reloaded = save_and_reload(removed, tmp_path)
    torch.testing.assert_close(logits(reloaded), logits(removed), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_every_head_of_a_layer_removed_leaves_an_empty_attention(tmp_path, arch):
    model = tiny_model(arch)
    block = blocks_of(model)[1][0]
    family = family_of(model)
    with torch.no_grad():
        for path in (family.q, family.k, family.v, family.o):  # the weakest heads of the model
            block.get_submodule(path).weight.mul_(1e-3)
    _, _, masked, removed = masked_and_removed(arch, "heads", model=model, allocation="global", allow_empty_layers=True)
    assert head_counts(family_of(removed), blocks_of(removed)[1][0])[0] == 0
    torch.testing.assert_close(logits(removed), logits(masked), atol=1e-5, rtol=0)
    if arch == "llama":  # the empty layer still fills its KV-cache slot, so positions stay right
        prompt = WINDOWS[:1, :5]
        assert torch.equal(removed.generate(prompt, max_new_tokens=4, do_sample=False),
                           masked.generate(prompt, max_new_tokens=4, do_sample=False))
    _, reloaded = save_and_reload(removed, tmp_path, "encoder" if arch == "bert" else "causal_lm")
    torch.testing.assert_close(logits(reloaded), logits(removed), atol=1e-5, rtol=0)


@pytest.mark.parametrize("options, sparsity, message", [
    (dict(gqa="kv_groups"), 0.3, "sparsity=0.3 cannot be honoured with 2 KV groups in each layer; possible ratios: 0, 0.5"),
    (dict(gqa="query_heads"), 0.25, "cannot be honoured with 2 query heads per KV group in each layer; possible ratios: 0, 0.5"),
    (dict(gqa="kv_groups", allocation="global"), 0.3, "with 4 KV groups in all layers; possible ratios: 0, 0.25, 0.5, 0.75"),
    (dict(criterion="entropy"), 0.5, None),  # fine for heads
])
def test_gqa_ratios_that_cannot_be_honoured_are_refused(options, sparsity, message):
    if message is None:
        plan(context(tiny_model("llama"), sparsity, **options), "heads")
        return
    with pytest.raises(PruneError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan(context(tiny_model("llama"), sparsity, **options), "heads")
    with pytest.raises(PruneError, match=message.replace("(", r"\(").replace(")", r"\)")):  # the same, right after loading
        check_model(context(tiny_model("llama"), sparsity, **options).options, sparsity, tiny_model("llama"))


def test_cli_refuses_a_gqa_ratio_before_pruning_with_one_line_and_no_run_dir(tmp_path, corpus):
    result = run_prune("run", "model=tiny_llama", "benchmark=none", "eval=none", "method=heads", "sparsity=0.3",
                       "data/calibration=text_file", f"data.calibration.path={corpus}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == ("prune: error: sparsity=0.3 cannot be honoured with 2 KV groups in each layer; "
                                                      "possible ratios: 0, 0.5")
    assert "Traceback" not in result.stdout + result.stderr and not list((tmp_path / "outputs").glob("*/*"))


def test_unsupported_module_type_and_family_are_named():
    model = tiny_model("llama")
    model.model.layers[1].mlp.down_proj = nn.Identity()
    with pytest.raises(PruneError, match="mlp.down_proj is a Identity, not a Linear or Conv1D"):
        plan(context(model, 0.5, windows=None), "ffn")
    model = tiny_model("llama")
    model.config.model_type = "gemma"
    with pytest.raises(PruneError, match="unknown model family for structured pruning 'gemma'"):
        plan(context(model, 0.5, windows=None), "ffn")


@pytest.mark.parametrize("arch, kind, options, message", [
    ("llama", "heads", dict(criterion="activation"), "criterion activation needs calibration windows"),
    ("llama", "ffn", dict(criterion="l2", bias_compensation=True), "needs calibration windows"),
    ("bert", "ffn", dict(criterion="taylor"), "criterion taylor needs a causal LM"),
    ("llama", "ffn", dict(criterion="entropy"), "criterion entropy scores heads only, not ffn"),
    ("llama", "ffn", dict(criterion="nope"), "unknown structured criterion 'nope'"),
    ("llama", "ffn", dict(allocation="owl"), "unknown structured allocation 'owl'"),
])
def test_bad_options_give_one_line_errors(arch, kind, options, message):
    windows = WINDOWS if "calibration" not in message else None
    with pytest.raises(PruneError, match=message):
        plan(context(tiny_model(arch), 0.5, windows=windows, **options), kind)


def test_options_are_checked_before_anything_is_loaded():
    """``pipeline.validate`` parses the options with the method's descriptor; the descriptor says
    when the options need calibration data."""
    heads, layers = METHODS.get("heads"), METHODS.get("layers")
    options = heads.parse(OmegaConf.load(REPO / "configs" / "method" / "heads.yaml"))
    assert not heads.needs_calibration(options)
    assert heads.needs_calibration(dataclasses.replace(options, criterion="taylor"))
    assert heads.needs_calibration(dataclasses.replace(options, bias_compensation=True))
    explicit = layers.parse(OmegaConf.load(REPO / "configs" / "method" / "layers.yaml"))
    assert layers.needs_calibration(explicit) and not layers.needs_calibration(dataclasses.replace(explicit, layers_to_remove=[1]))
    with pytest.raises(PruneError, match="criterion entropy scores heads only, not ffn"):
        METHODS.get("ffn").parse(OmegaConf.merge(OmegaConf.load(REPO / "configs" / "method" / "ffn.yaml"), {"criterion": "entropy"}))
    assert heads.check_model is check_model and layers.check_model is None and heads.reshapes and not METHODS.get("head_mask").reshapes


def test_head_mask_zeroes_what_heads_removes():
    masked, removed = tiny_model("gpt2"), tiny_model("gpt2")
    METHODS.get("head_mask").prune(context(masked, 0.5, windows=None, name="head_mask"))
    METHODS.get("heads").prune(context(removed, 0.5, windows=None))
    assert n_params(masked) == n_params(tiny_model("gpt2")) > n_params(removed)
    torch.testing.assert_close(logits(removed), logits(masked), atol=1e-5, rtol=0)


def test_cli_ffn_run_reports_the_shrunk_model_and_saves_a_reloadable_one(tmp_path, corpus):
    args = tiny_cli_args(corpus)
    result = run_prune("run", *args, "method=ffn", "sparsity=0.5", "method.criterion=l2", "save_model=true", cwd=tmp_path)
    run_dir, metrics = finished_run(result, tmp_path)
    assert metrics["params_removed"] == 2 * 64 * 3 * 64  # 64 neurons x (gate row + up row + down column) x 2 blocks
    assert metrics["params_removed_frac"] == pytest.approx(metrics["params_removed"] / (metrics["params_total"] + metrics["params_removed"]))
    assert "model.layers.0.mlp.down_proj,64x128,64x64," in (run_dir / "layers.csv").read_text()
    row = next(csv.DictReader((run_dir / "results.csv").open()))  # criterion columns for prune report
    assert (row["criterion"], row["gqa"], row["bias_compensation"]) == ("l2", "", "False")
    again = run_prune("run", *args, "model=hf", f"model.name_or_path={run_dir / 'model'}", "method=dense", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    reloaded = json.loads(sorted((tmp_path / "outputs").glob("*/*/metrics.json"))[-1].read_text())
    assert reloaded["ppl"] == pytest.approx(metrics["ppl"], rel=1e-6)


def test_cli_sensitivity_analysis_studies_the_method_and_leaves_the_model_dense(tmp_path, corpus):
    args = tiny_cli_args(corpus)
    result = run_prune("run", *args, "method=heads", "method.criterion=activation", "analysis=sensitivity", "analysis.ratios=[0.5]", cwd=tmp_path)
    run_dir, metrics = finished_run(result, tmp_path)
    assert (metrics["analysis"], metrics["method"], metrics["sparsity_target"], metrics["params_removed"]) == ("sensitivity", "heads", 0.0, 0)
    rows = list(csv.DictReader((run_dir / "sensitivity.csv").open()))
    assert [(r["unit"], r["units_removed"]) for r in rows] == [("model.layers.0", "1"), ("model.layers.1", "1")]  # 1 of 2 KV groups
    assert all(float(r["dense"]) == pytest.approx(metrics["ppl"], rel=1e-9) for r in rows)  # the run's model is the dense one
    assert metrics["sensitivity"]["method"] == "heads" and "analysis" in metrics["timings"] and metrics["calibration"]["nsamples"] == 4
    refused = run_prune("run", *args, "method=wanda", "analysis=sensitivity", cwd=tmp_path)
    assert refused.returncode == 2 and "analysis=sensitivity studies method=ffn|filters|heads (got method=wanda)" in refused.stderr


@pytest.mark.parametrize("kind", ["ffn", "heads"])
def test_sensitivity_prunes_a_copy_of_one_block_in_place_then_puts_the_model_back(kind):
    """No second model: the unit's block is copied and swapped in; the result equals pruning a copy of the
    whole model, and afterwards the model holds its own blocks, weights and config again."""
    from prunecli.analysis.sensitivity import UNITS, scope_copied

    model = tiny_model("llama")
    units = UNITS.get(kind)(context(model, 0.0, name=kind))
    state, config, blocks = copy.deepcopy(model.state_dict()), model.config.to_dict(), list(blocks_of(model)[1])
    whole = copy.deepcopy(model)
    removed = units.prune(whole, 1, 0.5)
    with scope_copied(model, units.scopes[1]) as pruned:
        assert pruned is model and units.prune(pruned, 1, 0.5) == removed > 0
        assert n_params(pruned) == n_params(whole) < n_params(tiny_model("llama"))
        assert torch.equal(logits(pruned), logits(whole))
    assert all(a is b for a, b in zip(blocks_of(model)[1], blocks)) and model.config.to_dict() == config
    assert model.state_dict().keys() == state.keys() and all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize("blocks, message", [([0, 7], r"block indices must be in 0\.\.1"), ([0, 1], "would remove every block")])
def test_bad_layers_to_remove_are_refused(blocks, message):
    with pytest.raises(PruneError, match=message):
        METHODS.get("layers").prune(context(tiny_model("llama"), 0.0, windows=None, name="layers", layers_to_remove=blocks))


@pytest.mark.parametrize("method, expected", [("ffn", 8), ("heads", 8), ("head_mask", 8), ("layers", 8), ("wanda", 64), ("magnitude", 64)])
def test_structured_methods_calibrate_on_fewer_windows_by_default(method, expected):
    from hydra import compose, initialize_config_dir
    from prunecli.config import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        assert compose("run", overrides=[f"method={method}"]).data.nsamples == expected
        assert compose("run", overrides=[f"method={method}", "data.nsamples=16"]).data.nsamples == 16  # the user's count wins


def test_a_structured_run_says_what_it_removed_not_its_zeros(tmp_path, corpus):
    result = run_prune("run", *tiny_cli_args(corpus), "method=ffn", "sparsity=0.25", cwd=tmp_path)
    run_dir, metrics = finished_run(result, tmp_path)
    assert "removes 0.25 of its units (structured" in result.stdout and "pattern=unstructured" not in result.stdout
    assert "structure removed" in result.stdout and "64 of 256 ffn units; kept per layer 2x96 of 2x128" in result.stdout
    rows = list(csv.DictReader((run_dir / "layers.csv").open()))
    down = [r for r in rows if r["name"].endswith("down_proj")]
    assert [(r["shape_before"], r["shape"]) for r in down] == [("64x128", "64x96")] * 2  # (out, in): 32 of 128 neurons gone
