"""Linear layers through oneDNN's fp32 matmul (the layer-wise passes' linear layers on CPU)."""

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from prunecli.methods.floor import counted_rules
from prunecli.models import linear
from prunecli.models.linear import ONEDNN_LINEAR, calibration_linear, onednn_linear, onednn_product, packed_weight
from tests.conftest import covered_in_wanda_passes

pytestmark = pytest.mark.skipif(ONEDNN_LINEAR is None, reason="this torch build has no oneDNN (mkldnn) linear")


def linear_float64(x, weight, bias):
    return x.double() @ weight.double().t() + (0 if bias is None else bias.double())


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.integers(1, 9), min_size=1, max_size=3), features=st.integers(1, 70), out=st.integers(1, 70),
       bias=st.booleans(), seed=st.integers(0, 2**16))
def test_onednn_linear_equals_the_product_to_float32_rounding(rows, features, out, bias, seed):
    """Any leading dims, widths, with or without bias: ``x W^T + b`` in float64, within what F.linear itself
    is off by (fp32 accumulation, another summation order)."""
    generator = torch.Generator().manual_seed(seed)
    module = torch.nn.Linear(features, out, bias=bias)
    with torch.no_grad():
        module.weight.copy_(torch.randn(out, features, generator=generator))
        if bias:
            module.bias.copy_(torch.randn(out, generator=generator))
        x = torch.randn(*rows, features, generator=generator)
        assert linear.covered(x, module.weight, module.bias)
        result = onednn_linear(module, packed_weight(module.weight), x)
        expected = linear_float64(x, module.weight, module.bias)
        tolerance = 4 * features * torch.finfo(torch.float32).eps * (x.abs().double() @ module.weight.abs().double().t() + 1)
    assert result.dtype == torch.float32 and result.shape == (*rows, out)
    assert ((result.double() - expected).abs() <= tolerance).all()


@pytest.mark.parametrize("case", ["strided_input", "float64", "autograd"])
def test_what_onednn_does_not_cover_goes_to_f_linear_unchanged(case):
    module = torch.nn.Linear(24, 12)
    x = torch.randn(12, 24)
    if case == "strided_input":  # oneDNN's path for a strided input is orders of magnitude slower
        x = torch.randn(24, 12).t()
    elif case == "float64":
        module, x = module.double(), x.double()
    with torch.set_grad_enabled(case == "autograd"):
        assert not linear.covered(x, module.weight, module.bias)
        packed = packed_weight(module.weight) if case != "float64" else None
        assert torch.equal(onednn_linear(module, packed, x), F.linear(x, module.weight, module.bias))


def test_a_packed_weight_is_a_copy_of_the_weight_in_onednns_layout():
    weight = torch.randn(48, 40)
    packed = packed_weight(weight)
    assert packed.is_mkldnn and torch.equal(packed.to_dense(), weight)
    for refused in (weight.double(), weight.t(), torch.randn(3, 4, 5), weight.to("meta")):
        assert packed_weight(refused) is None


def test_calibration_linear_swaps_plain_linear_forwards_on_cpu_only_while_inside():
    """The hooks still see each call; subclasses with their own forward and another device are left alone."""

    class Scaled(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), Scaled(8, 8))
    seen = []
    model[0].register_forward_pre_hook(lambda module, args: args and seen.append(args[0].shape))
    x = torch.randn(3, 8)
    with torch.no_grad():
        dense = model(x)
        with calibration_linear(model, torch.device("cpu")):
            assert model[0].forward.func is onednn_linear and "forward" not in vars(model[1])
            assert torch.equal(model[0].forward.args[1].to_dense(), model[0].weight)  # packed on the way in
            swapped = model(x)
        assert "forward" not in vars(model[0])
        with pytest.raises(RuntimeError), calibration_linear(model, torch.device("cpu")):
            raise RuntimeError
        assert "forward" not in vars(model[0])
        with calibration_linear(model, torch.device("meta")):
            assert "forward" not in vars(model[0])
        with calibration_linear(model, torch.device("cpu")):
            keyword = model[0](input=x)  # nn.Linear.forward's own argument name
        assert seen == [(3, 8), (3, 8)]
        torch.testing.assert_close(keyword, model[0](x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(swapped, dense, atol=1e-5, rtol=1e-5)
        model[0].weight.zero_()  # written outside: the next entry packs the new weight
        with calibration_linear(model, torch.device("cpu")):
            assert torch.equal(model[0](x), model[0].bias.expand(3, 8))


def test_the_flop_counter_counts_onednn_linear_as_f_linear():
    x, weight, bias = torch.randn(2, 5, 16), torch.randn(7, 16), torch.randn(7)
    counts = []
    for product in (lambda: F.linear(x, weight, bias), lambda: onednn_product(x, weight, bias)):
        with FlopCounterMode(display=False, custom_mapping=counted_rules()) as counter:
            product()
        counts.append(counter.get_total_flops())
    assert counts == [2 * 10 * 16 * 7] * 2


def test_the_layerwise_passes_multiply_by_onednn(monkeypatch):
    """Wanda's block passes on a tiny Llama run every block linear layer through oneDNN (and it computes, not
    delegates); the model's forwards are its own again afterwards."""
    covered, model = covered_in_wanda_passes(monkeypatch, linear)
    # 2 blocks: a statistics pass each (cut short before down_proj: 6 layers), the re-run of block 0 (7)
    assert len(covered) == 6 + 6 + 7 and all(covered)
    assert not any("forward" in vars(module) for module in model.modules())


def test_each_pass_multiplies_by_the_weights_as_they_are_when_it_starts(monkeypatch):
    """The walk packs a block's weights per pass: block 0's statistics pass its dense weights, its re-run the
    pruned ones (Wanda 50%: half zeros), block 1's statistics pass its dense weights (the last block: no re-run)."""
    zeros = []
    original = linear.packed_weight
    monkeypatch.setattr(linear, "packed_weight", lambda weight: zeros.append(float((weight == 0).float().mean())) or original(weight))
    covered_in_wanda_passes(monkeypatch, linear)
    assert zeros == [0.0] * 7 + [0.5] * 7 + [0.0] * 7
