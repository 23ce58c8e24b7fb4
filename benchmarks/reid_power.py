"""The identity probe's power on real chest X-rays, and the known same-person pair.

Data: ``../shared/data/covid_chestxray`` (Cohen et al., COVID-19 image data collection; 171
patients, 90 with two or more images). Never copied into the repository.

1. **Power on held-out patients.** For each of ``--splits`` seeded splits, half the patients
   train the probe (the ``identity`` embedder, fitted on their patient ids); the other half are
   held out. Verification AUC (same-patient pairs against different-patient pairs, bootstrap
   interval over patients) and top-1 retrieval are measured on the held-out patients only, for
   the probe and for the baseline it is built on: EfficientNet-Lite0's pooled ImageNet features
   (the ``imagenet`` embedder), untrained on identity. Same run, ratios printed.
2. **Patients 97 and 178 are the same person, published twice** (the data README). Training:
   patient 97 and a third of the others; holdout: the rest, without 178; synthetic: patient 178's
   images. The ``reid`` check must link them to patient 97.

Usage: ``OMP_NUM_THREADS=2 python benchmarks/reid_power.py [--splits 3] [--size 224]``. The last
line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "covid_chestxray" / "covid_cxr_licensed_256.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"real data not available: {args.data}")

    from privaudit.checks.reid import ReidOptions, probe_power
    from privaudit.config import AuditConfig
    from privaudit.data import ImageSet
    from privaudit.embed import get_embedder
    from privaudit.embed.identity import IdentityOptions
    from privaudit.pipeline import audit

    data = np.load(args.data, allow_pickle=False)
    images = data["images"]
    pid = data["patient_id"].astype(str)
    working = [(im / 255.0).astype(np.float32) for im in images]
    patients = np.array(sorted(set(pid)))
    counts = {p: int((pid == p).sum()) for p in patients}
    print(f"COVID-19 collection: {len(pid)} images of {len(patients)} patients, {sum(c >= 2 for c in counts.values())} with two or more")
    figures: dict[str, object] = {"images": len(pid), "patients": len(patients), "size": args.size, "splits": []}
    options = ReidOptions()
    baseline = get_embedder("imagenet")
    t = time.perf_counter()
    base_vectors = baseline.embed(working)
    base_time = time.perf_counter() - t
    print(f"{'split':>5} {'probe AUC (95% CI)':>26} {'top-1':>6} {'baseline AUC':>13} {'top-1':>6} {'AUC ratio':>9} {'held-out pts':>12} {'fit+embed s':>11}")
    for split in range(args.splits):
        rng = np.random.default_rng(split)
        order = rng.permutation(patients)
        train_p = set(order[: len(order) // 2].tolist())
        is_train = np.isin(pid, list(train_p))
        train = ImageSet.from_arrays(images[is_train], patient_ids=list(pid[is_train]))
        probe = get_embedder("identity", options=IdentityOptions(size=args.size))
        t = time.perf_counter()
        probe.fit(train, seed=0)
        held = [working[i] for i in np.flatnonzero(~is_train)]
        vectors = probe.embed(held)
        seconds = time.perf_counter() - t
        power = probe_power(vectors, pid[~is_train], options, np.random.default_rng(100 + split))
        base = probe_power(base_vectors[~is_train], pid[~is_train], options, np.random.default_rng(100 + split))
        ratio = power.verification_auc / base.verification_auc
        print(
            f"{split:>5} {power.verification_auc:>8.4f} ({power.auc_ci_low:.3f} to {power.auc_ci_high:.3f}) {power.top1_accuracy:>6.3f} "
            f"{base.verification_auc:>13.4f} {base.top1_accuracy:>6.3f} {ratio:>8.3f}x {power.n_patients:>12} {seconds:>11.1f}"
        )
        figures["splits"].append({  # type: ignore[union-attr]
            "split": split, "probe_auc": power.verification_auc, "probe_auc_ci": [power.auc_ci_low, power.auc_ci_high],
            "probe_top1": power.top1_accuracy, "baseline_auc": base.verification_auc, "baseline_top1": base.top1_accuracy,
            "auc_ratio": ratio, "heldout_patients_with_2plus": power.n_patients, "positive_pairs": power.n_positive_pairs,
            "fit_and_embed_seconds": seconds,
        })
    aucs = [s["probe_auc"] for s in figures["splits"]]  # type: ignore[index,union-attr]
    figures["probe_auc_mean"] = float(np.mean(aucs))
    figures["baseline_embed_seconds"] = base_time
    print(f"probe verification AUC on held-out patients: mean {np.mean(aucs):.4f} over {args.splits} splits (target 0.9)")

    # The same person published twice.
    others = sorted(set(patients.tolist()) - {"97", "178"})
    train_p = {"97"} | set(others[::3])
    is_train = np.isin(pid, list(train_p))
    is_hold = ~is_train & (pid != "178")
    config = AuditConfig.from_dict({"embedders": ["pixels"], "checks": ["reid"], "embedder_options": {"identity": {"size": args.size}}})
    t = time.perf_counter()
    result = audit(
        ImageSet.from_arrays(images[is_train], patient_ids=list(pid[is_train])),
        ImageSet.from_arrays(images[pid == "178"]),
        ImageSet.from_arrays(images[is_hold], patient_ids=list(pid[is_hold])),
        config=config,
        cache=False,
    )
    seconds = time.perf_counter() - t
    r = result.checks["reid"]
    linked = {p.train_patient_id: p.n_linked for p in r.patients}
    best = [e.p_value for p in r.patients for e in p.evidence]
    print(
        f"same person (178 as the synthetic set, 97 in training): status {r.status.value}, {r.n_linked} of {r.n_synthetic} "
        f"images linked, to {linked or 'nobody'}; smallest p = {min(best) if best else float('nan'):.4g}; "
        f"probe AUC on this audit's holdout {r.power.verification_auc:.4f}; {seconds:.1f} s"
    )
    figures["pair_97_178"] = {
        "status": r.status.value, "n_synthetic": r.n_synthetic, "n_linked": r.n_linked, "linked_to": linked,
        "linked_to_97": linked.get("97", 0), "min_p": min(best) if best else None, "probe_auc": r.power.verification_auc,
        "detection_floor": r.detection_floor, "seconds": seconds,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
