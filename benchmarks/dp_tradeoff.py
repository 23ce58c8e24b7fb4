"""The quality/privacy trade-off of DP-SGD on real chest X-rays: a 4-point ``dp-sweep``.

PneumoniaMNIST (../shared/data/medmnist; 28 px, resized to 32 by the sweep): training = 2,000
train-split images drawn at random with seed 0 (the split is sorted by label), holdout = the 624
test-split images. The default sweep: ε = 1, 3, 10 and inf, the ``vae`` generator, 20 epochs,
expected batch 64, PRV accountant, δ = 1 / (10 N), 500 canaries (a quarter of the training set),
1,000 synthetic images per point, audited with the default audit configuration (``pixels`` and
``copydetect``; copies and quality). PneumoniaMNIST has no patient ids: the per-image ε is all
that can be stated.

Prints the time of each point (training, sampling + audit) on this CPU and the curve, and ends
with one line holding a JSON object of the figures. The issue's target: a 4-point sweep on 2k
32 x 32 images in under 20 minutes on 2 cores.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dp_tradeoff.py [--epochs 20] [--threads 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--epsilons", default="1,3,10,inf")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-synthetic", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the cores are shared: default 1)")
    parser.add_argument("--out", help="sweep folder (default: a temporary one); a re-run resumes")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if not DATA.exists():
        print(f"skipped: {DATA} is not available")
        return 0
    import torch

    torch.set_num_threads(args.threads)
    from privaudit.data import ImageSet
    from privaudit.dp import SweepConfig, TrainOptions, dp_sweep, parse_epsilons

    d = np.load(DATA)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(d["train_images"]))[: args.n_train]
    train = ImageSet.from_arrays(d["train_images"][order], labels=d["train_labels"][order].ravel(), source="pneumoniamnist:train")
    holdout = ImageSet.from_arrays(d["test_images"], labels=d["test_labels"].ravel(), source="pneumoniamnist:test")
    config = SweepConfig(
        epsilons=parse_epsilons(args.epsilons),
        train=TrainOptions(epochs=args.epochs),
        n_synthetic=args.n_synthetic,
        device=args.device,
    )
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="dp-tradeoff-")) / "sweep"
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        if "epoch" not in msg or msg.split("epoch ")[1].split("/")[0] in ("1", str(args.epochs)):
            print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", file=sys.stderr, flush=True)

    result = dp_sweep(train, holdout, config=config, out=out, progress=progress)
    total = time.perf_counter() - t0
    keys = ("quality.fid_distance", "quality.cas_score", "quality.precision_score", "quality.coverage_score", "copies.copy_rate", "copies.flagged_rate")
    print(f"PneumoniaMNIST, {len(train)} training images given, {result.data['inputs']['n_train_used']} used; "
          f"δ = {result.data['privacy']['delta']:.3g}; {args.threads} torch thread(s); out {out}")
    print(f"{'ε':>6} {'accountant':>10} {'σ/C':>6} {'emp. LB':>8} {'train s':>8} {'audit s':>8} " + " ".join(f"{k.split('.')[1]:>14}" for k in keys))
    rows = []
    for p in result.points:
        row = {
            "epsilon": "inf" if p["epsilon"] is None else p["epsilon"],
            "accountant_epsilon": p["training"]["epsilon"],
            "noise_multiplier": p["training"]["noise_multiplier"],
            "empirical_epsilon_lb": p["empirical"]["epsilon_lb"] if p["empirical"] else None,
            "empirical_correct": p["empirical"]["correct"] if p["empirical"] else None,
            "empirical_guesses": p["empirical"]["guesses"] if p["empirical"] else None,
            "train_seconds": round(p["seconds"]["train"], 1),
            "audit_seconds": round(p["seconds"]["sample_and_audit"], 1),
            "verdict": p["verdict"],
        }
        for k in keys:
            m = p["metrics"].get(k)
            row[k] = None if m is None else m["value"]
            row[k + "_ci"] = None if m is None else [m.get("ci_low"), m.get("ci_high")]
        rows.append(row)
        acc = "-" if row["accountant_epsilon"] is None else f"{row['accountant_epsilon']:.3f}"
        lb = "-" if row["empirical_epsilon_lb"] is None else f"{row['empirical_epsilon_lb']:.3f}"
        vals = " ".join(f"{'n/a' if row[k] is None else format(row[k], '.4g'):>14}" for k in keys)
        print(f"{str(row['epsilon']):>6} {acc:>10} {row['noise_multiplier']:6.2f} {lb:>8} {row['train_seconds']:8.1f} {row['audit_seconds']:8.1f} {vals}")
    print(f"total {total:.0f} s ({total / 60:.1f} min) for {len(rows)} points; target: under 20 min for 4 points")
    for w in result.data["warnings"]:
        print(f"note: {w}")
    print(json.dumps({"benchmark": "dp_tradeoff", "total_seconds": round(total, 1), "threads": args.threads, "epochs": args.epochs,
                      "n_train_used": result.data["inputs"]["n_train_used"], "delta": result.data["privacy"]["delta"],
                      "positive_control": result.data["positive_control"], "points": rows}, default=lambda v: None if isinstance(v, float) and not math.isfinite(v) else v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
