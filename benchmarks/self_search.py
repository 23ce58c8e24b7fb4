"""Searching a set in itself (within-set duplicates, leave-one-patient-out nulls): FAISS exact
against privaudit's tiled half-product ``self_knn``, and both against the raw matrix product, in
the same run.

A self-search needs every inner product of the set with itself once: half of an N x N product,
since ``x_i . x_j = x_j . x_i``. FAISS (``IndexFlatIP``, what ``knn(x, x)`` runs) computes the
whole product; ``privaudit.search.self_knn`` computes the upper triangle of 4,096 x 4,096 tiles and
takes each tile's best values along both axes. Printed per N: the seconds of the full float32
product (``x[chunk] @ x.T`` with numpy's BLAS, no top-k), of FAISS and of ``self_knn`` (top-2,
itself included), of ``nearest_other`` (the one-neighbour pass that ``knn_excluding_self(k=1)``
runs from 512 dimensions: running maxima instead of sorted lists), their ratios to the half
product (the floor), and the largest difference between the searches' similarities.

Usage: ``python benchmarks/self_search.py [--sizes 20000,100000] [--dim 1024] [--threads 2]``.
Below ``privaudit.search.SELF_TRIANGLE_FROM_DIM`` dimensions ``self_knn`` hands the search to
FAISS; the triangle is timed here at every dimension (``method="triangle"``), which is how that
switch was chosen (``--dim 64``, ``--dim 256``).

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="20000,100000")
    parser.add_argument("--dim", type=int, default=1024, help="dimension (default 1024: the pixels space)")
    parser.add_argument("--k", type=int, default=2, help="neighbours per vector, itself included (default 2)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import faiss
    import numpy as np
    import torch

    from privaudit.search import knn, nearest_other, self_knn

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    figures: dict[str, object] = {"dim": args.dim, "k": args.k, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
                                  "faiss": faiss.__version__, "torch": torch.__version__, "results": []}
    print(f"self_search: d={args.dim}, k={args.k}, {args.threads} thread(s)")
    print(f"{'N':>8} {'product s':>10} {'faiss s':>9} {'self_knn s':>11} {'nearest s':>10} {'faiss/half':>11} {'self_knn/half':>14} "
          f"{'nearest/half':>13} {'speed-up':>9} {'max |diff|':>11}")
    for n in (int(s) for s in args.sizes.split(",")):
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, args.dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out = np.empty((4096, n), dtype=np.float32)
        t = time.perf_counter()
        for start in range(0, n, 4096):
            rows = x[start : start + 4096]
            np.matmul(rows, x.T, out=out[: len(rows)])
        product = time.perf_counter() - t
        t = time.perf_counter()
        a = knn(x, x, k=args.k)
        t_faiss = time.perf_counter() - t
        t = time.perf_counter()
        b = self_knn(x, k=args.k, method="triangle")  # the triangle even where auto would pick FAISS
        t_self = time.perf_counter() - t
        t = time.perf_counter()
        c = nearest_other(x)
        t_near = time.perf_counter() - t
        # The second column of a top-2 search is the nearest other vector (no duplicates here).
        diff = float(max(np.abs(a.similarities - b.similarities).max(), np.abs(a.similarities[:, 1:2] - c.similarities).max()))
        half = product / 2
        row = {"n": n, "product_s": round(product, 2), "faiss_s": round(t_faiss, 2), "self_knn_s": round(t_self, 2),
               "nearest_other_s": round(t_near, 2), "faiss_over_half_product": round(t_faiss / half, 2),
               "self_knn_over_half_product": round(t_self / half, 2), "nearest_other_over_half_product": round(t_near / half, 2),
               "speedup": round(t_faiss / t_self, 2), "max_abs_diff": diff}
        figures["results"].append(row)  # type: ignore[union-attr]
        print(f"{n:>8} {product:>10.2f} {t_faiss:>9.2f} {t_self:>11.2f} {t_near:>10.2f} {t_faiss / half:>11.2f} {t_self / half:>14.2f} "
              f"{t_near / half:>13.2f} {t_faiss / t_self:>8.2f}x {diff:>11.1e}", flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
