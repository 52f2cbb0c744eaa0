"""ADMM pruning (Boža 2024, "Fast and Optimal Weight Update for Pruned LLMs"): choose the mask
gradually and re-fit the kept weights of each layer to its dense outputs.

Per layer, with ``H = 2/n sum_t x_t x_t^T`` (the SparseGPT Hessian) and the dense weight ``W``:

    minimise  f(W') = tr((W' - W) H (W' - W)^T)   subject to  W' = 0 outside the mask M.

In the space scaled by ``d_j = sqrt(H_jj)`` (``V = W diag(d)``, ``G = diag(d)^-1 H diag(d)^-1``,
unit diagonal; dead inputs ``H_jj = 0`` get ``H_jj = 1`` and zero weights, as in SparseGPT),
damped ``G += percdamp * I``, ADMM splits ``W' = Z`` with ``Z`` on the mask, iteration k:

    Z_k = M_k * (V_k + U_k)                              (projection on the mask)
    U_{k+1} = U_k + V_k - Z_k                            (scaled dual)
    V_{k+1} = (V_0 G + rho (Z_k - U_{k+1})) (G + rho I)^-1   (least squares + proximal term)

The mask ``M_k`` is re-chosen from ``|V_k + U_k|`` (at k = 0 Wanda's ``|W_ij| ||X_j||``, up to a
constant) during the first ``mask_steps`` iterations, its sparsity rising cubically,
``s_k = s (1 - (1 - (k+1)/K)^3)`` (Zhu & Gupta's schedule; N:M: the full pattern each time),
then fixed. The result is ``Z = M (V + U)`` rescaled, optionally refined by ``refine_steps`` of
conjugate gradient on ``f`` over the mask's support (each step lowers ``f``). Recorded per
layer: the relative output error ``sqrt(f / tr(W H W^T)) = ||W X - W' X|| / ||W X||`` of the
mask without update (``error_before``) and with it (``error_after``), and the ADMM residual
``||V - Z|| / ||Z||`` (how far from converged).

``update=admm`` runs the same iteration on the fixed mask of another method (magnitude, Wanda,
SparseGPT; :mod:`prunecli.methods.update`): ``M_k = M`` throughout, ``mask_steps`` does not apply.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Literal

import torch

from prunecli.errors import PruneError
from prunecli.methods import CalibratedOptions, Method, PruneContext, register
from prunecli.methods.layerwise import prune_layerwise
from prunecli.methods.masks import check_nm_fits, select_mask
from prunecli.methods.statistics import Hessian
from prunecli.methods.targets import weight_matrix
from prunecli.methods.update import Update, objective, register_update, relative_error
from prunecli.options import Options, at_least

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ADMMUpdateOptions(Options):
    """The re-fit on a given mask (``update=admm``; also the re-fit part of ``method=admm``)."""

    iterations: int = 20  # ADMM iterations
    rho: float = 1.0  # ADMM penalty, in the scaled space (unit-diagonal H)
    percdamp: float = 0.1  # damping added to the scaled H's unit diagonal
    refine_steps: int = 0  # conjugate-gradient steps on the final support (0: none)

    def check(self, prefix: str) -> None:
        at_least(self, prefix, "iterations", 1)
        at_least(self, prefix, "percdamp", 0)
        at_least(self, prefix, "refine_steps", 0)
        if not self.rho > 0:
            raise PruneError(f"{prefix}.rho must be a number > 0 (got {self.rho!r})")


@dataclass(frozen=True)
class ADMMOptions(CalibratedOptions, ADMMUpdateOptions):
    mask_steps: int = 15  # the mask is re-chosen during the first mask_steps iterations (0: once, from Wanda's scores)
    comparison: Literal["row", "layer"] = "row"  # unstructured mask: per output row or per matrix

    def check(self, prefix: str) -> None:
        CalibratedOptions.check(self, prefix)
        ADMMUpdateOptions.check(self, prefix)
        at_least(self, prefix, "mask_steps", 0)
        if self.mask_steps > self.iterations:
            raise PruneError(f"{prefix}.mask_steps={self.mask_steps} exceeds {prefix}.iterations={self.iterations}")


def target_at(step: int, sparsity: float, mask_steps: int, nm: tuple[int, int] | None) -> float:
    """Sparsity of the mask chosen at ``step`` (cubic rise over ``mask_steps``; N:M and the last step: ``sparsity``)."""
    if nm is not None or mask_steps == 0 or step >= mask_steps - 1:
        return sparsity
    return sparsity * (1 - (1 - (step + 1) / mask_steps) ** 3)


# Chooses the mask at an iteration from the scores |V + U|: the new mask (True = kept), or None to keep the current one.
MaskRule = Callable[[int, torch.Tensor], "torch.Tensor | None"]


def gradual_mask(sparsity: float, nm: tuple[int, int] | None, options: ADMMOptions) -> MaskRule:
    """``method=admm``'s rule: re-chosen at each of the first ``mask_steps`` iterations (at least the first)."""
    def choose(step: int, scores: torch.Tensor) -> torch.Tensor | None:
        if step > 0 and step >= options.mask_steps:
            return None
        return ~select_mask(scores, target_at(step, sparsity, options.mask_steps, nm), nm, options.comparison)

    return choose


def admm_prune(W: torch.Tensor, H: torch.Tensor, sparsity: float, nm: tuple[int, int] | None, options: ADMMOptions,
               trace: list | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(W', keep, residual)`` with the mask chosen inside ADMM (:func:`gradual_mask`)."""
    return admm_iterate(W, H, options, None, gradual_mask(sparsity, nm, options), trace)


def admm_refit(W: torch.Tensor, H: torch.Tensor, keep: torch.Tensor, options: ADMMUpdateOptions,
               trace: list | None = None) -> tuple[torch.Tensor, float]:
    """``(W', residual)``: the weights re-fitted on the fixed mask ``keep`` (True = kept)."""
    updated, _, residual = admm_iterate(W, H, options, keep, None, trace)
    return updated, residual


@torch.no_grad()
def admm_iterate(W: torch.Tensor, H: torch.Tensor, options: ADMMUpdateOptions, keep: torch.Tensor | None,
                 choose: MaskRule | None, trace: list | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The iteration of the module doc: ``(W', keep, residual)``, the re-fitted weight (fp32), its mask and
    the final ADMM residual. ``choose`` (if given) may replace ``keep`` at each iteration. ``trace``
    collects ``f`` of every masked iterate ``Z_k`` (then of every refinement step)."""
    W, H = W.float().clone(), H.float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    d = torch.diag(H).sqrt()
    G = H / d[:, None] / d[None, :]
    G.diagonal().add_(options.percdamp)
    V0 = W * d
    target = V0 @ G
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(G + options.rho * torch.eye(len(G), device=G.device)))
    V, U = V0.clone(), torch.zeros_like(V0)
    for step in range(options.iterations):
        chosen = choose(step, (V + U).abs()) if choose is not None else None
        keep = chosen if chosen is not None else keep
        Z = (V + U) * keep
        U += V - Z
        V = (target + options.rho * (Z - U)) @ inverse
        if trace is not None:
            trace.append(objective(W, Z / d, H))
    Z = (V + U) * keep
    residual = float((V - Z).norm() / Z.norm().clamp_min(1e-30))
    if options.refine_steps:
        Z = refine(Z, V0, G, keep, options.refine_steps, trace, W, H, d)
    return Z / d, keep, residual


def refine(Z: torch.Tensor, V0: torch.Tensor, G: torch.Tensor, keep: torch.Tensor, steps: int,
           trace: list | None, W: torch.Tensor, H: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Conjugate gradient on ``(Z - V0) G (Z - V0)^T`` over the support of ``keep``, every row at once
    (each row is its own quadratic; a row whose step would not lower it stops)."""
    residual = ((V0 - Z) @ G) * keep
    direction = residual.clone()
    norm = (residual * residual).sum(1)
    for _ in range(steps):
        product = (direction @ G) * keep
        curvature = (direction * product).sum(1)
        alpha = torch.where(curvature > 0, norm / curvature.clamp_min(1e-30), torch.zeros_like(norm))
        Z = Z + alpha[:, None] * direction
        residual = residual - alpha[:, None] * product
        new_norm = (residual * residual).sum(1)
        beta = torch.where(norm > 0, new_norm / norm.clamp_min(1e-30), torch.zeros_like(norm))
        direction = residual + beta[:, None] * direction
        norm = new_norm
        if trace is not None:
            trace.append(objective(W, Z / d, H))
    return Z


def admm_layer(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, nm: tuple[int, int] | None,
               options: ADMMOptions, layer: str = "") -> dict:
    """Prune ``weight`` (an ``(out, in)`` tensor or view) in place; the layer's recorded figures."""
    if nm is not None:
        check_nm_fits(weight.shape[1], nm, layer)
    dense = weight.float().clone()
    updated, keep, residual = admm_prune(dense, hessian, sparsity, nm, options)
    weight.copy_(updated.to(weight.dtype))
    return {"error_before": relative_error(dense, dense * keep, hessian), "error_after": relative_error(dense, updated, hessian),
            "admm_residual": residual}


def error_summary(errors: dict[str, dict], options: ADMMUpdateOptions) -> dict:
    """metrics.json's account of a re-fit: iterations, mean errors before / after, the largest final residual."""
    return {
        "iterations": options.iterations,
        "error_before_mean": sum(e["error_before"] for e in errors.values()) / max(len(errors), 1),
        "error_after_mean": sum(e["error_after"] for e in errors.values()) / max(len(errors), 1),
        "residual_max": max((e["admm_residual"] for e in errors.values()), default=0.0),
    }


def admm(ctx: PruneContext) -> None:
    """Mask and weights by ADMM, block by block on the layer-wise pipeline (see module doc)."""
    errors: dict[str, dict] = {}

    def prune_block(index, layers, stats) -> None:
        for name, module in layers.items():
            errors[name] = admm_layer(weight_matrix(module), stats[name].hessian(), ctx.sparsity_of(name), ctx.nm, ctx.options, name)

    prune_layerwise(ctx, Hessian, prune_block, "admm", ctx.options.calibration_batch_size)
    ctx.stats["layer_errors"] = errors
    ctx.stats["admm"] = error_summary(errors, ctx.options) | {"mask_steps": ctx.options.mask_steps}


def refit_admm(weight: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor, options: ADMMUpdateOptions) -> tuple[torch.Tensor, dict]:
    """``update=admm``: the re-fitted weight on a method's mask, and its ADMM residual."""
    updated, residual = admm_refit(weight, hessian, keep, options)
    return updated, {"admm_residual": residual}


register(Method("admm", admm, ADMMOptions, calibration=True, offload=True))
register_update(Update("admm", refit_admm, ADMMUpdateOptions, summary=error_summary))
