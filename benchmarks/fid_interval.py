"""FID's standard error: the delete-a-group jackknife (``privaudit.metrics.fid_jackknife``) against
the plain bootstrap it replaced, both read against the truth.

For each case, two feature distributions are fixed; the truth is the standard deviation of FID
over ``--draws`` fresh pairs of sets drawn from them (the slow reference). Then, on ``--trials``
further pairs, the jackknife standard error (20 groups) and a plain bootstrap standard error (20
replicates, both sets resampled with replacement, FID recomputed each time: what the ``quality``
check used before) are computed and timed. The ratio of each estimate to the truth is printed:
1 is right, above 1 too wide. The baseline for time is the bootstrap, in the same run.

Usage::

    python benchmarks/fid_interval.py            # the cases below
    python benchmarks/fid_interval.py --quick    # the small cases only

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from privaudit.metrics import fid, fid_jackknife

# (name, d, n_real, n_fake, kind): "gauss" = N(0, I) against a linearly mixed, shifted Gaussian;
# "unit" = unit-length vectors (as privaudit's embedders give), the fake ones shifted by 0.1.
CASES = [
    ("gauss d=16 n=3000/3000", 16, 3000, 3000, "gauss"),
    ("gauss d=64 n=500/500", 64, 500, 500, "gauss"),
    ("gauss d=256 n=500/5000", 256, 500, 5000, "gauss"),
    ("unit d=1024 n=2000/10000", 1024, 2000, 10000, "unit"),
]


def sampler(d: int, kind: str, rng: np.random.Generator):
    mix = np.eye(d) + 0.3 * rng.normal(size=(d, d)) / np.sqrt(d)

    def draw(n_real: int, n_fake: int) -> tuple[np.ndarray, np.ndarray]:
        if kind == "unit":
            def unit(a: np.ndarray) -> np.ndarray:
                return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)

            return unit(rng.normal(size=(n_real, d))), unit(rng.normal(size=(n_fake, d)) + 0.1)
        return rng.normal(size=(n_real, d)), rng.normal(size=(n_fake, d)) @ mix + 0.05

    return draw


def bootstrap_se(real: np.ndarray, fake: np.ndarray, reps: int, rng: np.random.Generator) -> float:
    values = [fid(real[rng.integers(0, len(real), len(real))], fake[rng.integers(0, len(fake), len(fake))]) for _ in range(reps)]
    return float(np.std(values, ddof=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=40, help="fresh pairs for the truth")
    ap.add_argument("--trials", type=int, default=3, help="pairs on which both estimates are computed")
    ap.add_argument("--quick", action="store_true", help="only the cases below 1,000 dimensions")
    args = ap.parse_args()
    rows = []
    print(f"machine: {platform.machine()}, {platform.python_version()}; draws {args.draws}, trials {args.trials}")
    for name, d, n_real, n_fake, kind in CASES:
        if args.quick and d >= 1000:
            continue
        rng = np.random.default_rng(d + n_real)
        draw = sampler(d, kind, rng)
        t = time.perf_counter()
        truth = float(np.std([fid(*draw(n_real, n_fake)) for _ in range(args.draws)], ddof=1))
        truth_s = time.perf_counter() - t
        jack, boot, jack_s, boot_s = [], [], [], []
        for i in range(args.trials):
            real, fake = draw(n_real, n_fake)
            t = time.perf_counter()
            jack.append(fid_jackknife(real, fake, n_groups=20, rng=i).se)
            jack_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            boot.append(bootstrap_se(real, fake, 20, np.random.default_rng(i)))
            boot_s.append(time.perf_counter() - t)
        row = {
            "case": name, "truth_sd": truth, "truth_seconds": round(truth_s, 1),
            "jackknife_over_truth": [round(j / truth, 2) for j in jack],
            "bootstrap_over_truth": [round(b / truth, 2) for b in boot],
            "jackknife_seconds": round(float(np.median(jack_s)), 2),
            "bootstrap_seconds": round(float(np.median(boot_s)), 2),
        }
        row["speedup"] = round(row["bootstrap_seconds"] / row["jackknife_seconds"], 1)
        rows.append(row)
        print(
            f"{name}: truth sd {truth:.3g}; jackknife/truth {row['jackknife_over_truth']} in {row['jackknife_seconds']} s; "
            f"bootstrap/truth {row['bootstrap_over_truth']} in {row['bootstrap_seconds']} s ({row['speedup']}x slower)",
            flush=True,
        )
    print(json.dumps({"benchmark": "fid_interval", "draws": args.draws, "trials": args.trials, "cases": rows}))


if __name__ == "__main__":
    main()
