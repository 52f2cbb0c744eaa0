"""Sparsity schedules: the gradual curve, exact counts after every pruning step, iterative targets."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from torch import nn

from prunecli import schedules
from prunecli.errors import PruneError
from prunecli.finetune.masks import MaskKeeper
from prunecli.methods import PruneContext
from prunecli.methods.masks import prune_count
from prunecli.methods.targets import select_layers, weight_matrix
from tests.conftest import tiny_model

IGNORE = ["lm_head", "embed", "wte", "wpe", "pooler"]


def linear_stack(shapes, seed):
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(cols, rows) for rows, cols in shapes])


def train_a_little(model, keeper, generator):
    """Stand-in for optimizer steps: move every weight, then re-impose the masks."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    keeper.apply()


def test_cubic_is_zhu_and_gupta():
    s_i, s_f, t0, n, dt = 0.1, 0.8, 5, 4, 3
    for t in range(t0, t0 + n * dt + 1, dt):
        expected = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3
        assert schedules.gradual_sparsity(t, s_i, s_f, t0, t0 + n * dt, "cubic") == pytest.approx(expected, abs=1e-12)
    assert schedules.pruning_steps(t0, t0 + n * dt, dt) == [5, 8, 11, 14, 17]
    assert schedules.pruning_steps(0, 10, 4) == [0, 4, 8, 10]  # end_step always prunes


def test_exponential_removes_the_same_fraction_of_the_remaining_weights():
    events = schedules.gradual_events(0.0, 0.9, 0, 10, 2, "exponential")
    targets = list(events.values())
    fractions = [(b - a) / (1 - a) for a, b in zip(targets, targets[1:])]
    assert fractions == pytest.approx([fractions[0]] * len(fractions))
    assert targets[-1] == 0.9


@settings(max_examples=30, deadline=None)
@given(
    start=st.integers(0, 15), span=st.integers(0, 25), frequency=st.integers(1, 8),
    shape=st.sampled_from(schedules.SHAPES), scope=st.sampled_from(["per_layer", "global"]),
    target=st.floats(0.05, 0.97), initial_fraction=st.floats(0, 1),
    shapes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=3), seed=st.integers(0, 1000),
)
def test_gradual_schedule_property(start, span, frequency, shape, scope, target, initial_fraction, shapes, seed):
    initial = target * initial_fraction
    end = start + span
    events = schedules.gradual_events(initial, target, start, end, frequency, shape)
    steps = sorted(events)
    values = [events[t] for t in steps]
    assert steps[0] == start and steps[-1] == end
    assert all(a <= b for a, b in zip(values, values[1:])), values  # monotone
    assert values[-1] == target  # exactly the target at end_step
    assert all(initial <= v <= target for v in values)

    model = linear_stack(shapes, seed)
    layers = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    ctx = PruneContext(model, layers, target, None, OmegaConf.create({"name": "magnitude", "scope": scope}), torch.device("cpu"))
    repruner = schedules.Repruner(ctx)
    keeper = MaskKeeper(layers)
    generator = torch.Generator().manual_seed(seed)
    previous = {name: torch.zeros_like(m.weight, dtype=torch.bool) for name, m in layers.items()}
    for t in steps:
        train_a_little(model, keeper, generator)
        repruner.prune_to(events[t], step=t)
        keeper.record()
        zeros = {name: weight_matrix(m) == 0 for name, m in layers.items()}
        if scope == "per_layer":
            for name, mask in zeros.items():
                assert int(mask.sum()) == prune_count(mask.numel(), events[t]), (name, t)
        else:
            total = sum(mask.numel() for mask in zeros.values())
            assert sum(int(mask.sum()) for mask in zeros.values()) == prune_count(total, events[t])
        for name, mask in zeros.items():  # earlier pruned weights stay pruned
            assert bool(mask[previous[name]].all())
        previous = zeros


@pytest.mark.parametrize("recollect", [False, True])
def test_gradual_wanda_counts_per_row(recollect):
    model = tiny_model("llama")
    layers = select_layers(model, "all", IGNORE)
    windows = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(0))
    options = OmegaConf.create({"name": "wanda", "comparison": "row", "calibration_batch_size": 4})
    ctx = PruneContext(model, layers, 0.6, None, options, torch.device("cpu"), calibration=windows)
    repruner = schedules.Repruner(ctx, recollect=recollect)
    keeper = MaskKeeper(layers)
    generator = torch.Generator().manual_seed(1)
    for t, target in schedules.gradual_events(0.1, 0.6, 0, 6, 2, "cubic").items():
        train_a_little(model, keeper, generator)
        repruner.prune_to(target, step=t)
        keeper.record()
        for name, module in layers.items():
            weight = weight_matrix(module)
            per_row = (weight == 0).sum(dim=1)
            assert (per_row == prune_count(weight.shape[1], target)).all(), (name, t)
    assert repruner.sparsity() == pytest.approx(0.59375)  # floor(0.6 * 64) / 64 and floor(0.6 * 128) / 128


def test_iterative_targets_reach_the_target():
    for shape in schedules.SHAPES:
        targets = schedules.iterative_targets(4, 0.0, 0.8, shape)
        assert len(targets) == 4 and targets[-1] == 0.8
        assert all(0 < a < b for a, b in zip(targets, targets[1:]))
    geometric = schedules.iterative_targets(3, 0.0, 0.875, "exponential")
    assert geometric == pytest.approx([0.5, 0.75, 0.875])  # half of the remaining weights each cycle


def test_iterative_pruning_reaches_the_target_exactly():
    model = linear_stack([(7, 11), (5, 3)], 0)
    layers = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    ctx = PruneContext(model, layers, 0.7, None, OmegaConf.create({"name": "magnitude"}), torch.device("cpu"))
    repruner, keeper = schedules.Repruner(ctx), MaskKeeper(layers)
    for target in schedules.iterative_targets(3, 0.0, 0.7, "exponential"):
        train_a_little(model, keeper, torch.Generator().manual_seed(2))
        repruner.prune_to(target)
        keeper.record()
    assert [int((m.weight == 0).sum()) for m in layers.values()] == [prune_count(77, 0.7), prune_count(15, 0.7)]


def config(**overrides):
    base = {
        "sparsity": 0.5, "pattern": "unstructured", "allocation": "uniform",
        "method": {"name": "magnitude"}, "finetune": {"name": "lm"},
        "schedule": {"name": "gradual", "initial": 0.0, "start_step": 0, "end_step": None, "frequency": 2, "shape": "cubic"},
    }
    cfg = OmegaConf.create(base)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


@pytest.mark.parametrize("overrides, message", [
    ({"schedule.start_step": 5, "schedule.end_step": 3}, "schedule.end_step=3 is before schedule.start_step=5"),
    ({"method.name": "sparsegpt"}, "method=sparsegpt cannot do"),
    ({"method.name": "heads"}, "method=heads cannot do"),
    ({"finetune.name": "none"}, "prunes during fine-tuning"),
    ({"pattern": "2:4"}, "N:M pattern"),
    ({"allocation": "owl"}, "allocation=uniform"),
    ({"schedule.shape": "quartic"}, "unknown schedule.shape"),
    ({"schedule.initial": 0.7}, "schedule.initial must be in [0, sparsity=0.5]"),
    ({"schedule.frequency": 0}, "schedule.frequency must be an integer >= 1"),
    ({"schedule.frequency": "two"}, "schedule.frequency must be an integer (got 'two')"),
    ({"schedule.shap": "cubic"}, "unknown key schedule.shap (did you mean schedule.shape?)"),
    ({"schedule.name": "annealed"}, "unknown schedule 'annealed' (choose from: gradual, iterative, oneshot)"),
])
def test_bad_schedules_are_rejected(overrides, message):
    with pytest.raises(PruneError, match=None) as err:
        schedules.validate(config(**overrides))
    assert message in str(err.value)


def test_end_step_must_leave_recovery_steps():
    with pytest.raises(PruneError, match="before the last fine-tune step"):
        schedules.resolve_gradual(OmegaConf.create({"start_step": 0, "end_step": 10}), 10)
    assert schedules.resolve_gradual(OmegaConf.create({"start_step": 2, "end_step": None}), 100) == (2, 75)
    assert math.isclose(schedules.curve(0.5, 0.0, 0.5, "linear"), 0.25)
