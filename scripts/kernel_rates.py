"""How fast each kind of product in SparseGPT's block passes can run here, alone, by library (#19).

``metrics.json``'s floor puts every FLOP at the best rate the linear layers' products reach
(:func:`~prunecli.methods.floor.matmul_throughput`). The passes also run two other kinds of product, at other shapes:
the Hessians' ``X^T X`` (:class:`~prunecli.methods.statistics.Hessian`: bands of rows over ``tokens`` long inner
products) and the attention's scores and weighted values (:mod:`prunecli.models.attention`: inner products one head
wide). This times each kind alone at the packaged model's shapes for one calibration batch -- MKL (torch's ``addmm_`` /
``bmm``, what the passes run), oneDNN (its linear, from ``X^T`` copied contiguous for the Hessians, per matrix for the
attention) and OpenBLAS (numpy's ``matmul``) -- and prints each one's best GFLOP/s (the fastest of ``--repeats`` after a
warm-up; OpenBLAS last, so its threads never share the cores with torch's), beside the floor's rate::

    python scripts/kernel_rates.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hydra import compose, initialize_config_dir  # noqa: E402
from prunecli.environment import reuse_freed_memory  # noqa: E402
from prunecli.benchmark.timing import timed  # noqa: E402
from prunecli.methods.floor import matmul_shapes, matmul_throughput  # noqa: E402
from prunecli.methods.statistics import Hessian  # noqa: E402
from prunecli.models import load_model, parse_model  # noqa: E402
from prunecli.models.attention import CHUNK  # noqa: E402
from prunecli.models.layout import blocks_of  # noqa: E402
from prunecli.models.linear import onednn_product  # noqa: E402

CPU = torch.device("cpu")


def best_seconds(call: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` calls after a warm-up, as the floor times its products."""
    timed(call, CPU)
    return min(timed(call, CPU) for _ in range(repeats))


def hessian_products(features: int, tokens: int) -> tuple[int, dict[str, Callable[[], object]]]:
    """The band FLOPs of one batch's ``X^T X`` and the three ways to add them to the upper triangle."""
    x = torch.randn(tokens, features)
    hessian = Hessian(features, CPU)
    flops = hessian.band_flops(tokens)

    def onednn() -> None:
        xt = x.t().contiguous()  # oneDNN's linear multiplies by weight^T: rows of X^T on both sides
        for band in hessian.bands:
            hessian.sum_outer[band, band.start :] += onednn_product(xt[band], xt[band.start :])

    xn, total = x.numpy(), hessian.sum_outer.numpy()
    products = {band.start: np.empty((band.stop - band.start, features - band.start), np.float32) for band in hessian.bands}

    def openblas() -> None:
        for band in hessian.bands:
            np.matmul(xn[:, band].T, xn[:, band.start :], out=products[band.start])
            total[band, band.start :] += products[band.start]

    return flops, {"MKL": lambda: hessian.add(x), "oneDNN": onednn, "OpenBLAS": openblas}


def attention_products(batch: int, kv_heads: int, group: int, length: int, width: int) -> tuple[int, dict[str, Callable[[], object]]]:
    """The FLOPs of the chunked attention's scores and weighted values (query heads of a key/value head stacked as
    rows, a chunk of :data:`CHUNK` positions against the keys up to its end) and three ways to run them."""
    q = torch.randn(batch * kv_heads, length * group, width)
    k = torch.randn(batch * kv_heads, length, width)
    v = torch.randn(batch * kv_heads, length, width)
    vt = v.transpose(1, 2).contiguous()
    chunks = [(start, min(start + CHUNK, length)) for start in range(0, length, CHUNK)]
    scores = {end: torch.randn(batch * kv_heads, (end - start) * group, end) for start, end in chunks}
    flops = sum(2 * 2 * batch * kv_heads * (end - start) * group * end * width for start, end in chunks)

    def mkl() -> None:
        for start, end in chunks:
            torch.bmm(q[:, start * group : end * group], k[:, :end].transpose(1, 2))
            torch.bmm(scores[end], v[:, :end])

    def onednn() -> None:
        for start, end in chunks:
            for i in range(q.shape[0]):
                onednn_product(q[i, start * group : end * group], k[i, :end])
                onednn_product(scores[end][i], vt[i, :, :end].contiguous())

    qn, kn, vn = q.numpy(), k.numpy(), v.numpy()
    scores_n = {end: value.numpy() for end, value in scores.items()}

    def openblas() -> None:
        for start, end in chunks:
            np.matmul(qn[:, start * group : end * group], kn[:, :end].transpose(0, 2, 1))
            np.matmul(scores_n[end], vn[:, :end])

    return flops, {"MKL": mkl, "oneDNN": onednn, "OpenBLAS": openblas}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="calibration windows per batch")
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    for option in ("batch", "seqlen", "repeats"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1")
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        model = load_model(parse_model(compose("run").model)).model
    config, block = model.config, blocks_of(model)[1][0]
    tokens = args.batch * args.seqlen
    hidden, inner = config.hidden_size, config.intermediate_size
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    width = getattr(config, "head_dim", None) or hidden // heads
    kinds = {f"X^T X, {hidden} features": hessian_products(hidden, tokens),
             f"X^T X, {inner} features": hessian_products(inner, tokens),
             f"attention, {heads}/{kv_heads} heads of {width}": attention_products(args.batch, kv_heads, heads // kv_heads, args.seqlen, width)}
    libraries = ("MKL", "oneDNN", "OpenBLAS")
    with torch.inference_mode(), reuse_freed_memory():
        layers = {name: module for name, module in block.named_modules() if isinstance(module, torch.nn.Linear)}
        floor_rate = matmul_throughput(matmul_shapes(layers, tokens), CPU)
        rates = {(kind, library): flops / best_seconds(calls[library], args.repeats) / 1e9
                 for library in libraries for kind, (flops, calls) in kinds.items()}
    print(f"{tokens} tokens a batch; the floor's rate (the linear layers' products, best kernel): {floor_rate / 1e9:.0f} GFLOP/s")
    print(f"{'product':34s} {'GFLOP':>7s}" + "".join(f" {library:>9s}" for library in libraries))
    for kind, (flops, _) in kinds.items():
        print(f"{kind:34s} {flops / 1e9:7.2f}" + "".join(f" {rates[kind, library]:9.0f}" for library in libraries))


if __name__ == "__main__":
    main()
