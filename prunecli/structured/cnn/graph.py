"""Channel dependencies of a CNN, found by tracing it with :mod:`torch.fx`.

Every tensor of the traced graph gets a *layout*: its channel dimension (dim 1) as a list of
segments ``(space, factor)``. A *space* is a set of channels that must be pruned together;
``factor`` is how many consecutive features one channel occupies (1 for a feature map, ``H*W``
once ``(N, C, H, W)`` is flattened for a Linear). Spaces are merged (union-find) wherever
channels meet:

* a dense ``Conv2d`` (``groups=1``) *produces* a new space (its output filters) and *consumes*
  its input layout (its input channels);
* a per-channel module (``BatchNorm``, a depthwise ``Conv2d`` with ``groups = in = out``,
  ``PReLU``) and every channel-preserving op (activations, pooling, dropout, flatten, mean over
  the spatial dims) keep the layout of their input;
* an elementwise op between tensors (``x + skip``, ``x * gate``) merges the spaces of its
  inputs: a residual block's channels are one space with several producers (flagged
  ``residual``), a squeeze-excitation gate's last conv produces the channels it scales;
* ``torch.cat`` along the channels concatenates layouts;
* a ``Linear`` consumes its input layout (flatten factor included); its outputs are not pruned.

A space is *fixed* (never pruned) when it touches the model input or output, a Linear's output,
a grouped convolution, a broadcast or a per-channel constant. An op or module type not listed
above that receives a prunable space is refused with a :class:`PruneError` naming it.

The result, :class:`ChannelGraph`, lists the prunable :class:`ChannelGroup` s (one per
non-fixed space) and, per module, the layouts that removal slices by.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from prunecli.errors import PruneError

Segment = tuple[int, int]  # (space id, factor)
Layout = tuple[Segment, ...]

# Modules without per-channel parameters that keep the channel layout of their input.
PASSTHROUGH_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample, nn.ZeroPad2d,
)
PASSTHROUGH_FUNCTIONS = {
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
    F.hardtanh, F.sigmoid, F.tanh, F.softplus, torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.clamp,
    F.dropout, F.dropout2d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate,
}
# By qualified name, for libraries imported only when present: stochastic depth scales whole samples.
PASSTHROUGH_FUNCTION_NAMES = {"torchvision.ops.stochastic_depth.stochastic_depth"}
PASSTHROUGH_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min", "clamp_min_",
    "contiguous", "clone", "detach", "float", "to", "type_as",
}
BINARY_FUNCTIONS = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul, operator.truediv,
    operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
}
BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze}
RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze"}
REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax}
REDUCE_METHODS = {"mean", "sum", "amax"}
CAT_FUNCTIONS = {torch.cat, torch.concat}
SHAPE_METHODS = {"size", "dim", "numel"}

SUPPORTED = ("Conv2d (dense or depthwise), Linear, BatchNorm1d/2d, PReLU, activations, pooling, dropout, "
             "Flatten, Identity, +, *, torch.cat")


@dataclass
class ChannelGroup:
    """Channels pruned together: one space, its producing convs and every per-channel module on it."""

    name: str  # the first producer's module name
    space: int  # root space id
    size: int  # channels
    producers: list[str]  # dense convs whose output filters are these channels
    filters: list[tuple[str, int]]  # (module, offset): producers (offset 0) and depthwise convs, whose weight rows are filters
    norms: list[tuple[str, int]]  # (module, offset): BatchNorms on these channels
    consumers: list[str]  # modules whose inputs these channels are
    residual: bool  # joined by a sum (a skip connection); a product (squeeze-excitation gate) joins too, but is not "residual"

    @property
    def modules(self) -> list[str]:
        return list(dict.fromkeys([*self.producers, *(m for m, _ in self.filters), *(m for m, _ in self.norms), *self.consumers]))


@dataclass
class ModuleUse:
    """How removal slices one module: ``kind`` conv (dense), depthwise, norm (per channel), or linear."""

    kind: str
    in_layout: Layout | None = None  # dense conv / linear inputs; per-channel modules: their channels
    out_space: int | None = None  # dense conv output


class _Spaces:
    """Union-find over channel spaces, with size, fixed reason, producers and the residual flag."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: list[str | None] = []
        self.producers: list[list[str]] = []
        self.residual: list[bool] = []

    def new(self, size: int, fixed: str | None = None, producer: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.fixed.append(fixed)
        self.producers.append([producer] if producer else [])
        self.residual.append(False)
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int, residual: bool = False) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            self.residual[a] = self.residual[a] or residual
            return a
        if self.size[a] != self.size[b]:
            raise PruneError(f"internal error: merging channel spaces of sizes {self.size[a]} and {self.size[b]}")
        low, high = min(a, b), max(a, b)
        self.parent[high] = low
        self.fixed[low] = self.fixed[low] or self.fixed[high]
        self.producers[low] += self.producers[high]
        self.residual[low] = self.residual[low] or self.residual[high] or residual
        return low

    def fix(self, s: int, reason: str) -> None:
        root = self.find(s)
        self.fixed[root] = self.fixed[root] or reason


def _size(layout: Layout, spaces: _Spaces) -> int:
    return sum(spaces.size[s] * f for s, f in layout)


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as err:  # control flow on tensor values, unsupported Python constructs
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = "; method=filters is for CNNs, transformers have method=heads, ffn and layers" if hasattr(model, "config") else ""
        raise PruneError(f"method=filters traces the model with torch.fx, which cannot trace {type(model).__name__}: {first}{hint}") from None


class ChannelGraph:
    """The channel spaces and module uses of ``model`` (unchanged by building this)."""

    def __init__(self, model: nn.Module, example_args: tuple, example_kwargs: dict | None = None):
        self.model = model
        self.spaces = _Spaces()
        self.uses: dict[str, ModuleUse] = {}
        self.unsupported: list[tuple[str, list[int]]] = []
        self.order: list[str] = []  # modules in execution order
        gm = trace(model)
        was_training = model.training
        try:
            gm.eval()
            with torch.no_grad():
                ShapeProp(gm).propagate(*example_args, *(example_kwargs or {}).values())
        except Exception as err:
            raise PruneError(f"method=filters could not run {type(model).__name__} on an example input: {type(err).__name__}: {err}") from None
        finally:
            gm.train(was_training)
        self.layouts: dict[fx.Node, Layout | None] = {}
        for node in gm.graph.nodes:
            self.layouts[node] = self._visit(gm, node)
        for description, spaces in self.unsupported:
            if any(self.spaces.fixed[self.spaces.find(s)] is None for s in spaces):
                raise PruneError(f"method=filters cannot follow channels through {description}; supported: {SUPPORTED}")
        self.groups = self._groups()

    # -- tracing -------------------------------------------------------------------------

    def _fresh(self, node: fx.Node, reason: str) -> Layout | None:
        shape = _shape(node)
        if shape is None or len(shape) < 2:
            return None
        return ((self.spaces.new(shape[1], fixed=reason), 1),)

    def _fix(self, layout: Layout | None, reason: str) -> None:
        for s, _ in layout or ():
            self.spaces.fix(s, reason)

    def _unify(self, a: Layout, b: Layout, reason: str, residual: bool = False) -> Layout:
        """Merge two layouts channel by channel (same segments), else fix both."""
        sizes = lambda layout: [(self.spaces.size[s], f) for s, f in layout]  # noqa: E731
        if sizes(a) == sizes(b):
            for (sa, _), (sb, _) in zip(a, b):
                self.spaces.union(sa, sb, residual)
            return a
        self._fix(a, reason)
        self._fix(b, reason)
        return a

    def _tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if self.layouts.get(n) is not None else None)
        return found

    def _unsupported(self, node: fx.Node, description: str) -> Layout | None:
        spaces = [s for n in self._tensor_inputs(node) for s, _ in self.layouts[n]]
        if spaces:
            self.unsupported.append((description, spaces))
        return self._fresh(node, f"output of {description}")

    def _use(self, name: str, use: ModuleUse) -> ModuleUse:
        """Record a module's use; a module called twice must see the same channels."""
        if name not in self.uses:
            self.uses[name] = use
            self.order.append(name)
            return use
        previous = self.uses[name]
        if previous.in_layout is not None and use.in_layout is not None:
            self._unify(previous.in_layout, use.in_layout, f"module {name} called on different channel layouts")
        return previous

    def _visit(self, gm: fx.GraphModule, node: fx.Node) -> Layout | None:
        if node.op == "placeholder":
            return self._fresh(node, "model input")
        if node.op == "get_attr":
            return self._fresh(node, f"constant {node.target}")
        if node.op == "output":
            fx.node.map_arg(node.args, lambda n: self._fix(self.layouts.get(n), "model output"))
            return None
        inputs = self._tensor_inputs(node)
        if _shape(node) is None:  # x.size(0), x.shape: no channels to follow; a module returning a tuple: refused
            if inputs and not (node.op == "call_function" and node.target is getattr) and node.target not in SHAPE_METHODS:
                name = f"{node.target} ({type(gm.get_submodule(node.target)).__name__})" if node.op == "call_module" else f"{node.target} ({node.name})"
                self._unsupported(node, f"{name}, which does not return one tensor")
            return None
        first = self.layouts[inputs[0]] if inputs else None
        if node.op == "call_module":
            return self._visit_module(gm, node, str(node.target), first)
        target = node.target
        label = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        is_method = node.op == "call_method"
        if (target in PASSTHROUGH_METHODS) if is_method else (target in PASSTHROUGH_FUNCTIONS or _qualified(target) in PASSTHROUGH_FUNCTION_NAMES):
            return first
        if (target in BINARY_METHODS) if is_method else (target in BINARY_FUNCTIONS):
            return self._binary(node, inputs)
        if not is_method and target in CAT_FUNCTIONS:
            return self._cat(node, inputs)
        if (target in RESHAPE_METHODS) if is_method else (target in RESHAPE_FUNCTIONS):
            return self._reshape(node, inputs, first, f"{label} ({node.name})")
        if (target in REDUCE_METHODS) if is_method else (target in REDUCE_FUNCTIONS):
            return self._reduce(node, inputs, first, f"{label} ({node.name})")
        if not inputs:  # a tensor made from nothing the model's channels flow through (torch.zeros, arange)
            return self._fresh(node, f"tensor made by {label}")
        return self._unsupported(node, f"{'method' if is_method else 'function'} {label} ({node.name})")

    def _visit_module(self, gm: fx.GraphModule, node: fx.Node, name: str, first: Layout | None) -> Layout | None:
        module = gm.get_submodule(name)
        kind = type(module).__name__
        if first is None:
            return self._fresh(node, f"{name} ({kind}) on a non-tensor input")
        if isinstance(module, nn.Conv2d):
            if module.groups == 1:
                use = self._use(name, ModuleUse("conv", in_layout=first))
                if use.out_space is None:
                    use.out_space = self.spaces.new(module.out_channels, producer=name)
                return ((use.out_space, 1),)
            if module.groups == module.in_channels == module.out_channels and all(f == 1 for _, f in first):
                self._use(name, ModuleUse("depthwise", in_layout=first))
                return first
            self._fix(first, f"grouped conv {name}")
            return self._fresh(node, f"grouped conv {name}")
        if isinstance(module, nn.Linear):
            self._use(name, ModuleUse("linear", in_layout=first))
            return self._fresh(node, f"output of Linear {name}")
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) or (isinstance(module, nn.PReLU) and module.num_parameters > 1):
            self._use(name, ModuleUse("norm" if not isinstance(module, nn.PReLU) else "prelu", in_layout=first))
            return first
        if isinstance(module, PASSTHROUGH_MODULES) or isinstance(module, nn.PReLU):
            return first
        if isinstance(module, nn.Flatten):
            return self._reshape(node, self._tensor_inputs(node), first, f"{name} (Flatten)")
        return self._unsupported(node, f"{name} ({kind}): unsupported module type {kind}")

    def _binary(self, node: fx.Node, inputs: list[fx.Node]) -> Layout | None:
        out_shape = _shape(node)
        if len(out_shape) < 2:
            return None
        merged: Layout | None = None
        for n in inputs:
            shape, layout = _shape(n), self.layouts[n]
            aligned = 1 - (len(out_shape) - len(shape))  # the channel dim of this input after broadcasting
            channels = shape[aligned] if aligned >= 0 else 1
            if channels == 1 and out_shape[1] != 1:
                self._fix(layout, f"broadcast in {node.name}")
            elif len(shape) != len(out_shape):  # a per-channel constant such as a (C, 1, 1) scale
                if merged is not None:
                    self._fix(merged, f"per-channel constant in {node.name}")
                self._fix(layout, f"per-channel constant in {node.name}")
            else:
                merged = layout if merged is None else self._unify(merged, layout, f"elementwise op {node.name} on differently laid out channels",
                                                                   residual=_is_sum(node))
        if merged is None:
            return self._fresh(node, f"output of {node.name}")
        return merged

    def _cat(self, node: fx.Node, inputs: list[fx.Node]) -> Layout | None:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        ndim = len(_shape(node))
        if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, fx.Node) and self.layouts.get(t) is not None for t in tensors):
            return self._unsupported(node, f"torch.cat ({node.name}) of non-tensor parts")
        layouts = [self.layouts[t] for t in tensors]
        if dim % ndim == 1:
            return tuple(segment for layout in layouts for segment in layout)
        merged = layouts[0]
        for layout in layouts[1:]:
            merged = self._unify(merged, layout, f"torch.cat ({node.name}) of differently laid out channels")
        return merged

    def _reshape(self, node: fx.Node, inputs: list[fx.Node], first: Layout | None, description: str) -> Layout | None:
        """Channel-preserving (``N, C`` unchanged) or a flatten of ``(N, C, *S)`` to ``(N, C * prod(S))``."""
        if not inputs or first is None:
            return self._fresh(node, f"output of {description}")
        before, after = _shape(inputs[0]), _shape(node)
        if len(after) >= 2 and after[:2] == before[:2]:
            return first
        spatial = math.prod(before[2:])
        if len(after) == 2 and len(before) > 2 and after[0] == before[0] and after[1] == before[1] * spatial:
            return tuple((s, f * spatial) for s, f in first)
        return self._unsupported(node, f"{description}, a reshape of {tuple(before)} to {tuple(after)} that mixes channels")

    def _reduce(self, node: fx.Node, inputs: list[fx.Node], first: Layout | None, description: str) -> Layout | None:
        before = _shape(inputs[0]) if inputs else None
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if before is None or dims is None:
            return self._unsupported(node, f"{description}, a reduction over every dimension")
        dims = [d % len(before) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
        if 1 in dims or 0 in dims:
            return self._unsupported(node, f"{description}, a reduction over the channel or batch dimension")
        return first

    # -- groups --------------------------------------------------------------------------

    def _groups(self) -> list[ChannelGroup]:
        spaces = self.spaces
        groups: dict[int, ChannelGroup] = {}
        for name in self.order:
            use = self.uses[name]
            if use.kind == "conv":
                root = spaces.find(use.out_space)
                if spaces.fixed[root] is None and root not in groups:
                    groups[root] = ChannelGroup(spaces.producers[root][0], root, spaces.size[root], list(spaces.producers[root]),
                                                [(p, 0) for p in spaces.producers[root]], [], [], spaces.residual[root])
        for name in self.order:
            use = self.uses[name]
            for root, offset, factor in self.segments(use.in_layout):
                if root not in groups:
                    continue
                if use.kind == "depthwise":
                    groups[root].filters.append((name, offset))
                elif use.kind == "norm" and factor == 1:
                    groups[root].norms.append((name, offset))
                elif use.kind in ("conv", "linear"):
                    groups[root].consumers.append(name)
        return list(groups.values())

    def segments(self, layout: Layout | None) -> Iterable[tuple[int, int, int]]:
        """``(root space, channel offset, factor)`` of each segment of ``layout``."""
        offset = 0
        for s, f in layout or ():
            yield self.spaces.find(s), offset, f
            offset += self.spaces.size[s]

    def indices(self, layout: Layout, kept: dict[int, torch.Tensor]) -> torch.Tensor:
        """Feature indices a layout keeps when root space ``r`` keeps channels ``kept[r]``."""
        parts, start = [], 0
        for s, f in layout:
            root, size = self.spaces.find(s), self.spaces.size[s]
            channels = kept.get(root, torch.arange(size))
            parts.append(start + (channels[:, None] * f + torch.arange(f)).reshape(-1))
            start += size * f
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def layout_size(self, layout: Layout) -> int:
        return _size(layout, self.spaces)

    def fixed_reasons(self) -> dict[str, str]:
        """Dense convs whose filters are never pruned, with the reason."""
        reasons = {}
        for name in self.order:
            use = self.uses[name]
            if use.kind == "conv":
                reason = self.spaces.fixed[self.spaces.find(use.out_space)]
                if reason:
                    reasons[name] = reason
        return reasons


def _is_sum(node: fx.Node) -> bool:
    """``x + y`` / ``x - y`` (a skip connection), as opposed to ``x * gate``."""
    return node.target in (operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub, "add", "add_", "sub", "sub_")


def _qualified(target: Any) -> str:
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', '')}"


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def example_call(example: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` from a tensor, a tuple of args or an ``(args, kwargs)`` pair."""
    if isinstance(example, torch.Tensor):
        return (example,), {}
    if isinstance(example, tuple) and len(example) == 2 and isinstance(example[1], dict):
        return tuple(example[0]), dict(example[1])
    return tuple(example), {}
