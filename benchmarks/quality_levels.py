"""How the quality figures move between a good, a degraded and a useless synthetic set.

Builds synthetic sets with known properties from real PneumoniaMNIST images (../shared/data) and
from the phantoms, audits each with the ``quality`` check (``pixels`` space), and prints one row
per scenario; ends with one line holding a JSON object of the figures. The default policy's
quality levels are chosen from this table (see the README).

    .venv/bin/python benchmarks/quality_levels.py    # 1 minute on 2 idle cores, 7 under load

Scenarios (PneumoniaMNIST: training = 2,000 train images drawn at random with seed 0 (the file's
train split is sorted by label: its first 1,214 images are all class 0), holdout = the 624 test
images, synthetic sets of 524 images made from the val split, which no other role uses):

* ``real``: the val images themselves: an ideal generator (the real-vs-real reference).
* ``blur1``, ``blur2``: Gaussian blur, sigma 1 and 2 px: a smoother generator.
* ``noise``: additive Gaussian noise, sigma 0.1.
* ``collapse20``: 20 distinct val images, each repeated with faint noise: mode collapse.
* ``one_class``: val images of label 1 only.
* ``shuffled``: the val images with their labels permuted: useless for classification.
* ``wrong_modality``: BreastMNIST ultrasound images with their own labels.
* ``half_noise``: half the val images replaced by uniform noise.
* ``copies``: 524 of the training images: real quality, and a privacy failure.

Phantoms (``make_study`` defaults, as ``privaudit demo``): the ``clean`` and ``leaky`` sets.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "medmnist"


def main() -> int:
    from scipy.ndimage import gaussian_filter

    from privaudit.config import AuditConfig
    from privaudit.data import ImageSet
    from privaudit.phantoms import make_study
    from privaudit.pipeline import audit

    config = AuditConfig(checks=("copies", "quality"))
    rows = []

    def run(name: str, train: ImageSet, synthetic: ImageSet, holdout: ImageSet) -> None:
        t0 = time.perf_counter()
        result = audit(train, synthetic, holdout, config=config)
        q = result.checks["quality"]
        f = {fig.metric: fig for fig in q.figures}
        row = {"scenario": name, "n": q.n_compared, "seconds": round(time.perf_counter() - t0, 1)}
        for metric in ("precision_score", "recall_score", "density_score", "coverage_score", "fid_distance", "kid_distance"):
            row[metric] = f[metric].synthetic.value
            row[metric + "_baseline"] = f[metric].baseline.value
        for metric in ("precision_ratio_score", "coverage_ratio_score", "cas_score", "cas_ratio_score"):
            row[metric] = q.metrics[metric].value
        row["trtr"] = q.cas.trtr if q.cas is not None else None
        row["copies_flagged_rate"] = result.checks["copies"].metrics["flagged_rate"].value
        row["verdict"] = result.verdict.status.value
        rows.append(row)
        show = lambda v: " n/a " if v is None else f"{v:6.3f}"  # noqa: E731
        print(
            f"{name:15s} n={row['n']:4d}  P {show(row['precision_score'])} R {show(row['recall_score'])} "
            f"D {show(row['density_score'])} C {show(row['coverage_score'])} (base P {show(row['precision_score_baseline'])} C {show(row['coverage_score_baseline'])}) "
            f"P/base {show(row['precision_ratio_score'])} C/base {show(row['coverage_ratio_score'])}  FID {row['fid_distance']:.4f} (base {row['fid_distance_baseline']:.4f}) "
            f"KID {row['kid_distance']:.4f}  CAS {show(row['cas_score'])} TRTR {show(row['trtr'])} ratio {show(row['cas_ratio_score'])}  "
            f"copies {show(row['copies_flagged_rate'])}  [{row['seconds']} s]",
            flush=True,
        )

    if (DATA / "pneumoniamnist.npz").exists():
        pn = np.load(DATA / "pneumoniamnist.npz")
        rng = np.random.default_rng(0)
        pick_train = np.sort(rng.choice(len(pn["train_images"]), 2000, replace=False))
        train_images, train_labels = pn["train_images"][pick_train], pn["train_labels"][pick_train, 0]
        train = ImageSet.from_arrays(train_images, labels=train_labels, source="pneumonia:train")
        holdout = ImageSet.from_arrays(pn["test_images"], labels=pn["test_labels"], source="pneumonia:test")
        val, val_y = pn["val_images"].astype(np.float32) / 255.0, pn["val_labels"][:, 0]

        def syn(images: np.ndarray, labels: np.ndarray, name: str) -> ImageSet:
            return ImageSet.from_arrays(np.clip(images, 0, 1).astype(np.float32), labels=labels, source=name)

        n = len(val)
        copied = rng.choice(len(train_images), n, replace=False)
        collapse = rng.choice(n, 20, replace=False)
        pick = rng.choice(collapse, n)
        half = val.copy()
        half[: n // 2] = rng.uniform(size=half[: n // 2].shape)
        bm = np.load(DATA / "breastmnist.npz")
        breast = np.concatenate([bm["train_images"], bm["val_images"], bm["test_images"]])[:n].astype(np.float32) / 255.0
        breast_y = np.concatenate([bm["train_labels"], bm["val_labels"], bm["test_labels"]]).reshape(-1)[:n]
        scenarios = {
            "real": (val, val_y),
            "blur1": (np.stack([gaussian_filter(v, 1.0) for v in val]), val_y),
            "blur2": (np.stack([gaussian_filter(v, 2.0) for v in val]), val_y),
            "noise": (val + rng.normal(0, 0.1, val.shape), val_y),
            "collapse20": (val[pick] + rng.normal(0, 0.01, val.shape), val_y[pick]),
            "one_class": (val[val_y == 1], val_y[val_y == 1]),
            "shuffled": (val, rng.permutation(val_y)),
            "wrong_modality": (breast, breast_y),
            "half_noise": (half, val_y),
            "copies": (train_images[copied].astype(np.float32) / 255.0, train_labels[copied]),
        }
        for name, (images, labels) in scenarios.items():
            run(f"pneumonia:{name}", train, syn(images, labels, name), holdout)
    else:
        print(f"note: {DATA} is absent; PneumoniaMNIST scenarios skipped", file=sys.stderr)

    study = make_study(seed=0)
    run("phantoms:clean", study.train, study.clean, study.holdout)
    run("phantoms:leaky", study.train, study.leaky, study.holdout)
    print(json.dumps({"benchmark": "quality_levels", "date": time.strftime("%Y-%m-%d"), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
