"""Filter pruning of CNNs (``method=filters``), image data, ``eval=accuracy`` and ``analysis=sensitivity``.

The reference for every removal is the same filters *dead*: each removed channel's conv filter
and bias zeroed and its BatchNorm gamma and beta zeroed, so the channel is exactly 0 after
BN/ReLU; the physically shrunk model must give the same logits. Parameter counts are checked
against the same architecture built with the smaller widths.
"""

import copy
import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from prunecli.analysis import ANALYSES, AnalysisContext
from prunecli.errors import AssetMissingError, PruneError
from prunecli.methods import METHODS, PruneContext
from prunecli.models import LoadedModel
from prunecli.models.cnns import SmallCNN, TinyResNet
from prunecli.models.vision import load_state_resized, read_checkpoint, save_safetensors
from prunecli.structured.cnn.graph import ChannelGraph
from prunecli.structured.cnn.methods import apply, plan
from tests.conftest import REPO, run_prune, tiny_model

CPU = torch.device("cpu")


def conv_bn(cin, cout, kernel=3, stride=1, groups=1, act=nn.ReLU6):
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), act(inplace=True))


class Chain(nn.Module):
    """conv(bias)-BN-ReLU x2, then an output conv, global pool, flatten."""

    def __init__(self, widths=(8, 6), cin=3):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, widths[0], 3, padding=1), nn.BatchNorm2d(widths[0])
        self.conv2, self.bn2 = nn.Conv2d(widths[0], widths[1], 3, padding=1), nn.BatchNorm2d(widths[1])
        self.conv3 = nn.Conv2d(widths[1], 5, 1)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.conv3(x).mean((2, 3))


class FlattenHead(nn.Module):
    """conv(bias)-ReLU, conv(bias)-ReLU, flatten of a 5x5 map (25 features a channel) -> Linear."""

    def __init__(self, widths=(6, 4)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=2)
        self.conv2 = nn.Conv2d(widths[0], widths[1], 3, padding=1)
        self.fc = nn.Linear(widths[1] * 25, 10)

    def forward(self, x):
        x = nn.functional.relu(self.conv2(nn.functional.relu(self.conv1(x))))
        return self.fc(x.view(x.size(0), -1))


class InvertedResidual(nn.Module):
    """MobileNetV2: 1x1 expand, 3x3 depthwise, 1x1 project + BN, added to the input."""

    def __init__(self, channels, hidden):
        super().__init__()
        self.expand = conv_bn(channels, hidden, 1)
        self.dw = conv_bn(hidden, hidden, 3, groups=hidden)
        self.project = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        return x + self.project(self.dw(self.expand(x)))


class MobileNetish(nn.Module):
    """stem, an inverted residual, a depthwise-separable block (dw stride 2 + pointwise), pool, Linear."""

    def __init__(self, widths=(8, 24, 12)):
        super().__init__()
        c, hidden, out = widths
        self.stem = conv_bn(3, c, 3, 2)
        self.block = InvertedResidual(c, hidden)
        self.dw = conv_bn(c, c, 3, 2, groups=c)
        self.pw = conv_bn(c, out, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(out, 10)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.pw(self.dw(self.block(self.stem(x))))), 1))


class Branches(nn.Module):
    """Two conv branches concatenated along the channels, then a conv that reads both."""

    def __init__(self, widths=(4, 6)):
        super().__init__()
        self.a, self.b = conv_bn(3, widths[0]), conv_bn(3, widths[1], 1)
        self.mix = nn.Conv2d(sum(widths), 5, 1)

    def forward(self, x):
        return self.mix(torch.cat([self.a(x), self.b(x)], dim=1)).amax((2, 3))


def randomise_norms(model, seed=0):
    """Non-trivial BatchNorm statistics and affine parameters (eval mode)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) - 0.3)
    return model.eval()


def build(cls, widths, seed=0, **kwargs):
    torch.manual_seed(seed)
    return randomise_norms(cls(widths=widths, **kwargs), seed)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def context(model, sparsity=0.5, calibration=None, shape=None, **options):
    """A filters context; without calibration images the model is traced on ``LoadedModel.example_input`` of ``shape``."""
    opts = OmegaConf.create({"name": "filters", "criterion": "l1", "allocation": "per_layer", **options})
    return PruneContext(model, {}, sparsity, None, opts, CPU, calibration=calibration, example_input=example_of(model, shape))


def example_of(model, shape):
    return LoadedModel(model, None, "m", "image_classifier", CPU, torch.float32, shape).example_input(1) if shape else None


def images(shape, n=4, seed=0):
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def dead_filters(model, chosen):
    """The reference: removed channels produce exactly 0 (filters and biases zeroed, BN gamma and beta zeroed)."""
    reference = copy.deepcopy(model)
    for group, gone in zip(chosen.groups, chosen.removed):
        for name, offset in group.filters:
            conv = reference.get_submodule(name)
            conv.weight[offset + gone] = 0
            if conv.bias is not None:
                conv.bias[offset + gone] = 0
        for name, offset in group.norms:
            bn = reference.get_submodule(name)
            bn.weight[offset + gone] = 0
            bn.bias[offset + gone] = 0
    return reference


CASES = {  # name: (class, widths, halved widths, input shape)
    "chain": (Chain, (8, 6), (4, 3), (3, 9, 9)),
    "flatten_linear": (FlattenHead, (6, 4), (3, 2), (3, 11, 11)),
    "residual": (TinyResNet, (16, 32), (8, 16), (1, 12, 12)),
    "depthwise_separable": (MobileNetish, (8, 24, 12), (4, 12, 6), (3, 16, 16)),
    "small_cnn": (SmallCNN, (16, 32, 40), (8, 16, 20), (1, 28, 28)),
    "concat": (Branches, (4, 6), (2, 3), (3, 8, 8)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("criterion", ["l1", "geometric_median"])
def test_removed_filters_equal_dead_filters_and_free_the_expected_parameters(case, criterion):
    cls, widths, halved, shape = CASES[case]
    model, x = build(cls, widths), images(shape)
    chosen = plan(context(model, 0.5, shape=shape, criterion=criterion), None)
    assert all(len(r) == g.size // 2 for g, r in zip(chosen.groups, chosen.removed))
    removed, masked = copy.deepcopy(model), copy.deepcopy(model)
    apply(removed, chosen, physically=True)
    apply(masked, chosen, physically=False)
    with torch.no_grad():
        out, reference, zeroed, dense = removed(x), dead_filters(model, chosen)(x), masked(x), model(x)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, zeroed, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, dense, atol=1e-3)  # something was pruned
    assert n_params(removed) == n_params(cls(widths=halved)) < n_params(model)
    assert n_params(masked) == n_params(model)


def test_groups_follow_residual_depthwise_and_flatten_couplings():
    groups = {g.name: g for g in ChannelGraph(build(SmallCNN, (16, 32, 40)), (images((1, 28, 28), 1),)).groups}
    assert sorted(groups) == ["down.0", "pw.0", "res.conv1", "stem.0"]
    assert groups["down.0"].filters == [("down.0", 0), ("dw.0", 0)]  # the depthwise conv follows its input
    assert [n for n, _ in groups["down.0"].norms] == ["down.1", "dw.1"]
    assert groups["pw.0"].producers == ["pw.0", "res.conv2"] and groups["pw.0"].residual  # joined by the skip
    assert groups["pw.0"].consumers == ["res.conv1", "head"]
    removed = build(SmallCNN, (16, 32, 40))
    apply(removed, plan(context(removed, 0.5, shape=(1, 28, 28))))
    assert (removed.dw[0].groups, removed.dw[0].in_channels, removed.head.in_features) == (16, 16, 20 * 4)
    assert removed.pw[1].running_mean.shape == (20,)


def test_residual_keep_leaves_skip_connected_channels_whole():
    model = build(TinyResNet, (16, 32))
    chosen = plan(context(model, 0.5, shape=(1, 12, 12), residual="keep"))
    assert [g.name for g in chosen.groups] == ["layers.0.0.conv1", "layers.0.1.conv1", "layers.1.0.conv1", "layers.1.1.conv1"]
    apply(model, chosen)
    assert model.conv1.out_channels == 16 and model.fc.in_features == 32 and model.layers[1][0].conv2.in_channels == 16


def test_targets_restrict_which_groups_are_pruned():
    model = build(Chain, (8, 6))
    ctx = context(model, 0.5, shape=(3, 9, 9))
    ctx.layers = {"conv2": model.conv2}
    chosen = plan(ctx)
    assert [g.name for g in chosen.groups] == ["conv2"]


def probe(filters, gammas=None):
    """conv1 (1 -> n, 2x2 kernel, so a filter is 4 numbers) + BN + ReLU, then conv2 (n -> 3) + BN + ReLU, conv3, mean."""
    model = randomise_norms(Chain((len(filters), 3), cin=1))
    with torch.no_grad():
        model.conv1 = nn.Conv2d(1, len(filters), 2)
        model.conv1.weight.copy_(torch.tensor(filters, dtype=torch.float32).view(-1, 1, 2, 2))
        if gammas is not None:
            model.bn1.weight.copy_(torch.tensor(gammas))
        model.bn1.bias.fill_(1.0)  # ReLU active: every filter gets a gradient
    return model.eval()


FILTERS = [[3, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 6], [2, 2, 2, 2]]  # l1: 3 4 6 8; l2: 3 2 6 4


@pytest.mark.parametrize("criterion, model, sparsity, expected", [
    ("l1", lambda: probe(FILTERS), 0.25, [0]),
    ("l2", lambda: probe(FILTERS), 0.25, [1]),
    ("l1", lambda: probe(FILTERS), 0.5, [0, 1]),
    ("bn_gamma", lambda: probe(FILTERS, gammas=[0.5, -0.1, 2.0, 1.0]), 0.25, [1]),
    # 1-D points 0, 1, 3, 4, 20: total distances 28, 25, 23, 24, 72: the median (3) goes, not the smallest
    ("geometric_median", lambda: probe([[0, 0, 0, 0], [1, 0, 0, 0], [3, 0, 0, 0], [4, 0, 0, 0], [20, 0, 0, 0]]), 0.2, [2]),
    ("l1", lambda: probe([[0, 0, 0, 0], [1, 0, 0, 0], [3, 0, 0, 0], [4, 0, 0, 0], [20, 0, 0, 0]]), 0.2, [0]),
])
def test_each_criterion_removes_the_expected_filters(criterion, model, sparsity, expected):
    chosen = plan(context(model(), sparsity, shape=(1, 6, 6), criterion=criterion))
    assert [g.name for g in chosen.groups] == ["conv1", "conv2"]
    assert chosen.removed[0].tolist() == expected


def test_taylor_removes_the_filter_the_loss_does_not_see():
    model = probe([[1, 1, 1, 1], [2, 2, 2, 2], [9, 9, 9, 9], [3, 3, 3, 3]])
    with torch.no_grad():
        model.conv2.weight[:, 2] = 0  # channel 2 (the largest filter) feeds nothing: gradient 0
    calibration = (images((1, 6, 6), 8), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    assert plan(context(model, 0.25, calibration, criterion="taylor")).removed[0].tolist() == [2]
    assert plan(context(model, 0.25, calibration, criterion="l1")).removed[0].tolist() == [0]
    with pytest.raises(PruneError, match="criterion taylor needs calibration images"):
        plan(context(model, 0.25, None, shape=(1, 6, 6), criterion="taylor"))


def test_global_allocation_ranks_all_groups_and_refuses_an_empty_layer():
    model = build(Chain, (4, 12))
    with torch.no_grad():
        model.conv1.weight.mul_(1e-3)
    with pytest.raises(PruneError, match=r"would remove every filter of conv1; .*allow_empty_layers=true"):
        plan(context(model, 0.5, shape=(3, 9, 9), allocation="global", normalize="none"))
    chosen = plan(context(model, 0.5, shape=(3, 9, 9), allocation="global", normalize="none", allow_empty_layers=True))
    assert [len(r) for r in chosen.removed] == [3, 5]  # conv1 keeps its best filter; the budget of 8 is met
    apply(model, chosen)
    assert model.conv1.out_channels == 1 and model(images((3, 9, 9))).shape == (4, 5)


class WithGroupNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.gn, self.head = nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.gn(self.conv(x))).mean((2, 3))


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else -self.conv(x)


def test_unsupported_modules_and_untraceable_models_are_named():
    with pytest.raises(PruneError, match=r"cannot follow channels through gn \(GroupNorm\): unsupported module type GroupNorm"):
        plan(context(WithGroupNorm().eval(), 0.5, calibration=(images((3, 8, 8)), torch.zeros(4, dtype=torch.long))))
    with pytest.raises(PruneError, match="torch.fx, which cannot trace Branchy"):
        plan(context(Branchy().eval(), 0.5, calibration=(images((3, 8, 8)), torch.zeros(4, dtype=torch.long))))
    with pytest.raises(PruneError, match="criterion bn_gamma: no BatchNorm follows the filters of conv1"):
        plan(context(FlattenHead().eval(), 0.5, calibration=(images((3, 11, 11)), torch.zeros(4, dtype=torch.long)), criterion="bn_gamma"))
    with pytest.raises(PruneError, match="unknown filter criterion 'nope'"):
        METHODS.get("filters").parse(OmegaConf.create({"name": "filters", "criterion": "nope"}))


def test_shrunk_model_saves_and_reloads_with_identical_logits(tmp_path):
    model, x = build(SmallCNN, (16, 32, 40)), images((1, 28, 28))
    apply(model, plan(context(model, 0.5, shape=(1, 28, 28), allocation="global")))
    save_safetensors(model, tmp_path / "model.safetensors")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "model.pt")
    for name in ("model.safetensors", "model.pt"):
        fresh = SmallCNN().eval()
        load_state_resized(fresh, read_checkpoint(str(tmp_path / name)))
        with torch.no_grad():
            torch.testing.assert_close(fresh(x), model(x), atol=1e-6, rtol=0)
    with pytest.raises(PruneError, match="model.checkpoint=.*: no such file"):
        read_checkpoint(str(tmp_path / "missing.pt"))


def test_torchvision_missing_gives_the_pip_command(monkeypatch):
    from prunecli.models.vision import ImageModelOptions, load_torchvision

    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(PruneError, match=r"model=torchvision needs torchvision, which is not installed: pip install 'prunecli\[vision\]'"):
        load_torchvision(ImageModelOptions(name="torchvision", source="torchvision", arch="resnet18", num_classes=10))


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def fake_fashion_mnist(folder: Path, levels: list[int], labels: list[int]) -> Path:
    """An idx folder whose test image i is filled with 20 * levels[i] (train: the same images)."""
    folder.mkdir(parents=True, exist_ok=True)
    x = np.stack([np.full((28, 28), 20 * k, dtype=np.uint8) for k in levels])
    y = np.array(labels, dtype=np.uint8)
    for prefix, compress in (("t10k", True), ("train", False)):
        suffix = ".gz" if compress else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", x, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", y, compress)
    return folder


class Oracle(nn.Module):
    """Predicts class k for an image filled with 20 * k (undoing the Fashion-MNIST normalisation)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        level = ((x.mean((1, 2, 3)) * 0.3530 + 0.2860) * 255 / 20).round().long()
        return nn.functional.one_hot(level, 10).float() + self.dummy


def test_accuracy_evaluator_counts_correct_predictions(tmp_path):
    from prunecli.evaluate import EVALUATORS, EvalContext
    from prunecli.evaluate.accuracy import AccuracyOptions, accuracy_f1
    from prunecli.models.vision import ImageModelOptions

    levels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2]
    labels = [0, 1, 2, 3, 4, 5, 6, 0, 0, 0, 1, 9]  # 8 of 12 right; 7 of the first 8
    folder = fake_fashion_mnist(tmp_path / "fmnist", levels, labels)
    loaded = LoadedModel(Oracle(), None, "oracle", "image_classifier", CPU, torch.float32, (1, 28, 28))
    model = ImageModelOptions(dataset={"source": "fashion_mnist", "path": str(folder), "eval_samples": None})
    accuracy = EVALUATORS.get("accuracy")

    def evaluator(model_info, max_examples=None):
        return accuracy.build(EvalContext(model_info, AccuracyOptions(batch_size=5, max_examples=max_examples), model, None, None))

    metrics = evaluator(loaded)(loaded.model)
    assert metrics["accuracy"] == pytest.approx(8 / 12) and metrics["eval_samples"] == 12
    assert evaluator(loaded, max_examples=8)(loaded.model)["accuracy"] == pytest.approx(7 / 8)
    assert accuracy_f1([1, 0, 1, 1], [1, 0, 0, 1], 2) == {"accuracy": 0.75, "f1": pytest.approx(0.8)}
    with pytest.raises(PruneError, match="eval=accuracy has no evaluator for model x, a causal_lm"):
        evaluator(LoadedModel(Oracle(), None, "x", "causal_lm", CPU, torch.float32))


def test_missing_dataset_names_the_apt_package(tmp_path):
    from prunecli.data.vision import calibration_images, read_fashion_mnist

    with pytest.raises(AssetMissingError, match="apt-get install dataset-fashion-mnist"):
        read_fashion_mnist(str(tmp_path), "test")
    folder = fake_fashion_mnist(tmp_path / "fmnist", [3, 1, 4, 1, 5], [0, 1, 2, 3, 4])
    x, y = calibration_images(OmegaConf.create({"source": "fashion_mnist", "path": str(folder)}), (3, 32, 32), 3, 0)
    assert x.shape == (3, 3, 32, 32) and y.tolist() == sorted(set(y.tolist()))  # labels = indices: 3 distinct, in order
    again, _ = calibration_images(OmegaConf.create({"source": "fashion_mnist", "path": str(folder)}), (3, 32, 32), 3, 0)
    assert torch.equal(x, again)  # a fixed subset


def sensitivity_context(model, method, analysis, evaluate, run_dir, shape=None):
    inner = PruneContext(model, {}, 0.0, None, OmegaConf.create(method), CPU, example_input=example_of(model, shape))
    options = ANALYSES.get("sensitivity").parse({"name": "sensitivity", **analysis}, method["name"])
    return AnalysisContext(inner, options, evaluate, run_dir)


def test_cnn_sensitivity_prunes_one_group_at_a_time_and_writes_table_and_plot(tmp_path):
    from prunecli.evaluate.accuracy import classification_metrics

    model, x = build(SmallCNN, (16, 32, 40)), images((1, 28, 28), 32)
    with torch.no_grad():
        labels = model(x).argmax(1)  # the dense model scores 1.0
    evaluate = lambda m: classification_metrics(m(x).detach(), labels)  # noqa: E731
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = sensitivity_context(model, {"name": "filters", "criterion": "l2"}, {"ratios": [0.25, 0.5], "metric": "auto"}, evaluate, tmp_path, (1, 28, 28))
    summary = ANALYSES.get("sensitivity").run(ctx)
    rows = (tmp_path / "sensitivity.csv").read_text().splitlines()
    assert rows[0] == "unit,ratio,units_total,units_removed,params_removed,metric,dense,value,delta,drop"
    assert [r.split(",")[:4] for r in rows[1:3]] == [["stem.0", "0.25", "16", "4"], ["stem.0", "0.5", "16", "8"]]
    assert len(rows) == 1 + 4 * 2 and (tmp_path / "sensitivity.png").stat().st_size > 0
    assert all(float(r.split(",")[6]) == 1.0 for r in rows[1:])  # dense accuracy
    assert summary["metric"] == "accuracy" and len(summary["most_sensitive"]) == 4
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is left as it was


def test_lm_sensitivity_uses_the_transformer_methods_one_block_at_a_time():
    from prunecli.evaluate.perplexity import perplexity
    from prunecli.analysis.sensitivity import analyse

    model = tiny_model("llama")
    windows = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))
    evaluate = lambda m: perplexity(m, windows, progress=False)  # noqa: E731
    params = n_params(model)
    ctx = sensitivity_context(model, {"name": "ffn"}, {"ratios": [0.5], "metric": "auto"}, evaluate, None)
    rows = analyse(ctx)
    assert n_params(model) == params
    assert {r["metric"] for r in rows} == {"ppl"}
    assert [(r["unit"], r["units_removed"], r["params_removed"]) for r in rows] == [("model.layers.0", 64, 64 * 3 * 64), ("model.layers.1", 64, 64 * 3 * 64)]
    assert all(r["drop"] == pytest.approx(r["value"] - r["dense"]) for r in rows)  # ppl: higher is worse


def test_sensitivity_config_composes_with_the_method_options():
    from hydra import compose, initialize_config_dir

    from prunecli.pipeline import needs_calibration, validate

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("run", overrides=["model=small_cnn", "eval=accuracy", "method=filters", "analysis=sensitivity",
                                        "analysis.ratios=[0.25,0.5]", "method.criterion=taylor"])
    assert cfg.analysis.ratios == [0.25, 0.5] and cfg.method.name == "filters"
    assert needs_calibration(cfg, validate(cfg))  # taylor needs the calibration images
    cfg.analysis.ratios = [0.5, 1.5]
    with pytest.raises(PruneError, match=r"analysis.ratios must be a non-empty list of numbers in \(0, 1\)"):
        validate(cfg)
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("run", overrides=["method=magnitude", "analysis=sensitivity"])
    with pytest.raises(PruneError, match=r"analysis=sensitivity studies method=ffn\|filters\|heads \(got method=magnitude\)"):
        validate(cfg)


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (FASHION_MNIST / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_cli_small_cnn_filters_run_trains_caches_prunes_and_reports_accuracy(tmp_path, monkeypatch):
    from prunecli.data.vision import eval_images
    from prunecli.evaluate.accuracy import classification_metrics, classifier_logits

    monkeypatch.setenv("PRUNECLI_CACHE", str(tmp_path / "cache"))
    result = run_prune("run", "model=small_cnn", "model.train_steps=3", "method=filters", "sparsity=0.5", "eval=accuracy",
                       "eval.baseline=true", "model.dataset.eval_samples=200", "data.nsamples=8", "benchmark=quick",
                       "benchmark.warmup=1", "benchmark.repeats=2", "save_model=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["calibration"]["source"] == "fashion_mnist"
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["accuracy_dense"] <= 1 and metrics["eval_samples"] == 200
    assert metrics["params_removed"] == n_params(SmallCNN()) - n_params(SmallCNN(widths=(8, 16, 20)))
    assert metrics["structured"]["filters_removed"] == 8 + 16 + 20 + 20 and metrics["prefill_ms"] > 0
    assert "stem.0,16x9,8x9," in (run_dir / "layers.csv").read_text()
    assert len(list((tmp_path / "cache" / "vision").glob("small_cnn-*.safetensors"))) == 1
    reloaded = SmallCNN().eval()
    load_state_resized(reloaded, read_checkpoint(str(run_dir / "model" / "model.safetensors")))
    x, y = eval_images(OmegaConf.create({"source": "fashion_mnist", "path": None}), None, 200)
    assert classification_metrics(classifier_logits(reloaded, x, 64, CPU), y)["accuracy"] == pytest.approx(metrics["accuracy"])
