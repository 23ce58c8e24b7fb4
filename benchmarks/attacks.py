"""Time each membership attack at N = 10k and 100k synthetic (and reference) vectors: privaudit's
FAISS implementation against the scikit-learn ``NearestNeighbors`` approach of existing tabular
privacy tools, in the same run, with the ratio printed.

Setup: unit vectors of dimension 128 (the copy-detection descriptor's size), seeded; the synthetic
and the reference set each hold N vectors; 2,000 targets (1,000 members, 1,000 non-members: a
typical evaluation set) are scored. Both implementations must give the same scores (checked: the
largest absolute difference is printed). DOMIAS has no neighbour search (Gaussian KDEs in 5
principal components); it is timed once, with no baseline.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/attacks.py [--sizes 10000,100000] [--threads 1]``.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def sklearn_scores(name: str, targets: np.ndarray, synthetic: np.ndarray, reference: np.ndarray, k: int, threads: int) -> np.ndarray:
    """The same attacks written the way tabular tools write them: NearestNeighbors (Euclidean,
    algorithm "auto") fitted on each set; cosine similarity recovered from the Euclidean distance
    of unit vectors (s = 1 - d^2 / 2)."""
    from sklearn.neighbors import NearestNeighbors

    def nearest(base: np.ndarray, kk: int = 1) -> tuple[np.ndarray, np.ndarray]:
        nn = NearestNeighbors(n_neighbors=kk, n_jobs=threads).fit(base)
        d, i = nn.kneighbors(targets)
        return 1.0 - d**2 / 2.0, i

    if name == "dcr":
        return nearest(synthetic)[0][:, 0]
    if name == "dcr_calibrated":
        return nearest(synthetic)[0][:, 0] - nearest(reference)[0][:, 0]
    if name == "knn_count":
        pool = np.concatenate([synthetic, reference])
        _, idx = nearest(pool, k)
        c_s = (idx < len(synthetic)).sum(axis=1).astype(np.float64)
        c_r = k - c_s
        base = np.log((c_s + 0.5) / len(synthetic)) - np.log((c_r + 0.5) / len(reference))
        return base + 1e-6 * (nearest(synthetic)[0][:, 0] - nearest(reference)[0][:, 0])
    raise ValueError(name)


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--targets", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = parser.parse_args()

    import faiss
    import sklearn

    from privaudit.checks.membership import ATTACKS, AttackData, MembershipOptions

    faiss.omp_set_num_threads(args.threads)
    options = MembershipOptions()
    rng = np.random.default_rng(0)
    figures: dict[str, object] = {
        "threads": args.threads, "dim": args.dim, "targets": args.targets, "faiss": faiss.__version__,
        "sklearn": sklearn.__version__, "cpu": platform.processor() or platform.machine(), "results": [],
    }
    print(f"attacks benchmark: d={args.dim}, {args.targets} targets, {args.threads} thread(s); times are the best of 2 runs")
    print(f"{'N':>8} {'attack':<16} {'faiss s':>9} {'sklearn s':>10} {'ratio':>7} {'max |diff|':>11}")
    for n in (int(s) for s in args.sizes.split(",")):
        synthetic = unit(rng.normal(size=(n, args.dim)))
        reference = unit(rng.normal(size=(n, args.dim)))
        # Members: noisy copies of synthetic vectors (a leak), non-members fresh.
        members = unit(synthetic[: args.targets // 2] + 0.3 * rng.normal(size=(args.targets // 2, args.dim)))
        targets = np.concatenate([members, unit(rng.normal(size=(args.targets - args.targets // 2, args.dim)))])
        for name in ("dcr", "dcr_calibrated", "knn_count", "domias"):
            # Fresh data for each run: AttackData remembers its searches, so a second run on the
            # same object would be served from the first.
            t_f, s_f = timed(lambda: ATTACKS.get(name)(targets, AttackData(synthetic=synthetic, reference=reference), options), repeats=2)
            row: dict[str, object] = {"n": n, "attack": name, "faiss_s": round(t_f, 4)}
            if name != "domias":
                t_s, s_s = timed(lambda: sklearn_scores(name, targets, synthetic, reference, options.k, args.threads), repeats=2)
                diff = float(np.max(np.abs(np.asarray(s_f) - np.asarray(s_s))))
                row.update(sklearn_s=round(t_s, 4), ratio=round(t_s / t_f, 2), max_abs_diff=diff)
                print(f"{n:>8} {name:<16} {t_f:>9.3f} {t_s:>10.3f} {t_s / t_f:>6.1f}x {diff:>11.2e}")
            else:
                print(f"{n:>8} {name:<16} {t_f:>9.3f} {'(no kNN)':>10} {'':>7} {'':>11}")
            figures["results"].append(row)  # type: ignore[union-attr]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
