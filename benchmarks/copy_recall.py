"""Recall of planted copies per transform family, per embedder, at a fixed false-positive rate.

Real images from ../shared/data: a training split, copies of some training images planted under
each transform family of privaudit.transforms, and real non-copies (other images or other
patients). For each embedder, an image is scored as the copies check scores it by default (``ratio``):
the log of its cosine distance to its most similar real non-copy over its distance to its most
similar training image (``--score relative``: the difference of the two similarities) (for a non-copy itself: the most similar non-copy of *another* patient, or another
image where there are no patient ids). The non-copies are the null. The threshold is set on the
null at 1 % FPR (and 0.1 % where there are at least 3,000 non-copies); recall is the share of
planted copies above it, per family. ``--score raw`` scores by the similarity alone.
Families the copydetect descriptor never saw in training are marked "held out": recall on the
families it was trained for is optimistic.

    python benchmarks/copy_recall.py --dataset pneumoniamnist
    python benchmarks/copy_recall.py --dataset covid --embedders pixels,imagenet,copydetect

``aligned`` (in ``--embedders``) is the copies check's aligned-correlation component
(privaudit.align), scored the same way; ``--combined a,b,c`` adds a row for the combination the
copies check makes of those spaces: the smallest per-space conformal p-value against the null,
its threshold set at the same FPR on the null images' own statistic (each left out of its null).
``--weights`` weighs the spaces of ``--combined`` (weighted min-p: each p-value divided by its
weight; default: equal). The check's default is ``--combined pixels,aligned --weights 1/3,2/3``
(``copies.aligned_weight``) and ``--combined pixels,copydetect`` above ``copies.align_max``,
where the aligned comparison does not run.

MedMNIST splits are image-level (no patient ids): its non-copies are other images, which may
include other scans of the same patients. The last line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from privaudit import align, transforms
from privaudit.data import ImageSet, load_imageset
from privaudit.embed import get_embedder
from privaudit.embed.copydetect import HELD_OUT
from privaudit.search import knn, knn_excluding_self

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def load(dataset: str, n_train: int, seed: int) -> tuple[ImageSet, ImageSet, str]:
    rng = np.random.default_rng(seed)
    if dataset == "pneumoniamnist":
        d = np.load(DATA / "medmnist" / "pneumoniamnist.npz")
        images = np.concatenate([d["train_images"], d["val_images"], d["test_images"]])
        order = rng.permutation(len(images))
        everything = ImageSet.from_arrays(images[order], source="pneumoniamnist")
        train = everything.subset(range(n_train), source="pneumoniamnist:train")
        rest = everything.subset(range(n_train, len(everything)), source="pneumoniamnist:rest")
        note = "image-level split (MedMNIST has no patient ids)"
    elif dataset == "covid":
        covid = load_imageset(DATA / "covid_chestxray" / "covid_cxr_licensed_256.npz", role="covid")
        pids = np.array(covid.patient_ids)
        patients = sorted(set(pids) - {"178"})  # 178 is patient 97 published twice
        rng.shuffle(patients)
        train_p = set(patients[: len(patients) // 2])
        train = covid.subset([i for i, p in enumerate(pids) if p in train_p], source="covid:train")
        rest = covid.subset([i for i, p in enumerate(pids) if p not in train_p and p != "178"], source="covid:other-patients")
        note = "patient-level split"
    elif dataset == "phantoms":
        from privaudit.phantoms import make_study

        study = make_study(n_train_patients=n_train // 4, n_holdout_patients=n_train // 4, n_synthetic=n_train, size=64, seed=seed)
        train = study.train
        rest = ImageSet(images=study.holdout.images + study.clean.images, ids=study.holdout.ids + study.clean.ids, source="phantoms:non-copies")
        note = "phantoms (patient-level)"
    else:
        raise SystemExit(f"unknown dataset {dataset}")
    # Exact duplicates of training images among the non-copies are copies, not false alarms.
    train_digests = set(train.pixel_digests)
    keep = [i for i, d in enumerate(rest.pixel_digests) if d not in train_digests]
    removed = len(rest) - len(keep)
    if removed:
        note += f"; {removed} non-copy image(s) identical to training images removed"
    return train, rest.subset(keep, source=rest.source), note


def plant(train: ImageSet, per_family: int, seed: int) -> tuple[list[np.ndarray], list[str], list[int]]:
    images, families, sources = [], [], []
    for f, family in enumerate(transforms.FAMILIES):
        rng = np.random.default_rng([seed, f])
        for i in rng.choice(len(train), size=min(per_family, len(train)), replace=False):
            images.append(transforms.apply(family, train.images[i], rng))
            families.append(family)
            sources.append(int(i))
    return images, families, sources


def align_options(pairs: list[str]) -> align.AlignOptions:
    """``KEY=VALUE`` pairs as :class:`privaudit.align.AlignOptions` (comma lists for tuples)."""
    import dataclasses

    defaults = align.AlignOptions()
    kwargs: dict[str, object] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        current = getattr(defaults, key, None)
        if current is None or not value:
            raise SystemExit(f"--align {pair!r}: expected KEY=VALUE with KEY one of {', '.join(f.name for f in dataclasses.fields(defaults))}")
        if isinstance(current, tuple):
            kwargs[key] = tuple(float(v) for v in value.split(","))
        elif isinstance(current, bool):
            kwargs[key] = value.lower() in ("1", "true", "yes")
        else:
            kwargs[key] = type(current)(value)
    return align.AlignOptions(**kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="pneumoniamnist", choices=("pneumoniamnist", "covid", "phantoms"))
    parser.add_argument("--embedders", default="pixels,imagenet,copydetect")
    parser.add_argument("--n-train", type=int, default=2500)
    parser.add_argument("--per-family", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--score", default="ratio", choices=("ratio", "relative", "raw"))
    parser.add_argument("--align", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the aligned comparison (privaudit.align.AlignOptions), e.g. smooth=0.7 or "
                             "crops=1,0.9,0.8 (repeatable; default: its defaults)")
    parser.add_argument("--combined", default="", help="comma-separated spaces (of --embedders) to combine by min-p, as the copies check does")
    parser.add_argument("--weights", default="", help="comma-separated weights of the --combined spaces, e.g. 1/3,2/3 (default: equal)")
    args = parser.parse_args(argv)
    if not DATA.exists() and args.dataset != "phantoms":
        print(f"real data not found at {DATA}", file=sys.stderr)
        return 2

    train, noncopies, note = load(args.dataset, args.n_train, args.seed)
    copies, families, sources = plant(train, args.per_family, args.seed)
    families_arr, sources_arr = np.array(families), np.array(sources)
    print(f"{args.dataset}: {len(train)} training images, {len(noncopies)} real non-copies, {len(copies)} planted copies ({note}); {args.score} score")
    fprs = [0.01] + ([0.001] if len(noncopies) >= 3000 else [])
    groups = np.asarray(noncopies.patient_ids) if noncopies.patient_ids is not None else np.arange(len(noncopies))
    figures: dict[str, object] = {"dataset": args.dataset, "score": args.score, "n_train": len(train), "n_noncopies": len(noncopies), "note": note,
                                  "align_options": args.align, "embedders": {}}
    per_space: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    linked_by: dict[str, np.ndarray] = {}
    for name in args.embedders.split(","):
        t0 = time.perf_counter()
        if name == "aligned":
            embedder = None
            t_fit = 0.0
            opts = align_options(args.align)
            base, q_copy = align.prepare(train.images, opts, role="base"), align.prepare(copies, opts, role="query")
            q_non = align.prepare(noncopies.images, opts, role="query")
            ref_base = align.as_role(q_non, opts, role="base")
            null = align.match(q_non, base, opts).similarity
            found = align.match(q_copy, base, opts)
            score, nearest = found.similarity, found.nearest
            null_ref_raw = align.match(q_non, ref_base, opts, groups=(groups.astype(str), groups.astype(str))).similarity
            ref_raw = align.match(q_copy, ref_base, opts).similarity
            t_embed = time.perf_counter() - t0
        else:
            embedder = get_embedder(name)
            if embedder.requires_fit:
                embedder.fit(train, seed=args.seed, cache=None)
            t_fit = time.perf_counter() - t0
            t0 = time.perf_counter()
            e_train = embedder.embed(train)
            e_non = embedder.embed(noncopies)
            e_copy = embedder.embed(copies)
            t_embed = time.perf_counter() - t0
            null = knn(e_non, e_train, k=1).similarities[:, 0]
            hit = knn(e_copy, e_train, k=1)
            score, nearest = hit.similarities[:, 0], hit.indices[:, 0]
            if args.score != "raw":
                null_ref_raw = knn_excluding_self(e_non, k=1, groups=groups).similarities[:, 0]
                ref_raw = knn(e_copy, e_non, k=1).similarities[:, 0]
        if args.score == "relative":
            null = null - null_ref_raw
            score = score - ref_raw
        elif args.score == "ratio":
            null = np.log(np.clip(1 - null_ref_raw, 1e-6, None)) - np.log(np.clip(1 - null, 1e-6, None))
            score = np.log(np.clip(1 - ref_raw, 1e-6, None)) - np.log(np.clip(1 - score, 1e-6, None))
        per_space[name] = (np.asarray(null, dtype=np.float64), np.asarray(score, dtype=np.float64))
        linked_by[name] = nearest
        fitted = embedder is not None and embedder.requires_fit
        row: dict[str, object] = {"fit_s": round(t_fit, 1), "embed_images_per_s": round((len(train) + len(noncopies) + len(copies)) / t_embed, 1)}
        print(f"\n{name}: fit {t_fit:.1f} s, embedding {row['embed_images_per_s']} images/s")
        header = "family".ljust(10) + "".join(f"  recall@{f:.1%}FPR".rjust(18) for f in fprs) + "  linked".rjust(10) + ("  (held out)" if fitted else "")
        print(header)
        for fpr in fprs:
            threshold = float(np.quantile(null, 1 - fpr, method="higher"))
            realised = float((null > threshold).mean())
            row[f"threshold@{fpr}"] = threshold
            row[f"realised_fpr@{fpr}"] = realised
        per_family = {}
        for family in transforms.FAMILIES:
            sel = families_arr == family
            recalls = {f"recall@{fpr}": float((score[sel] > row[f"threshold@{fpr}"]).mean()) for fpr in fprs}
            linked = float((nearest[sel] == sources_arr[sel]).mean())
            per_family[family] = {**recalls, "linked": linked, "held_out": family in HELD_OUT if fitted else None}
            mark = "  *" if fitted and family in HELD_OUT else ""
            print(family.ljust(10) + "".join(f"{recalls[f'recall@{fpr}']:18.1%}" for fpr in fprs) + f"{linked:10.1%}" + mark)
        row["families"] = per_family
        row["min_recall@0.01"] = min(v["recall@0.01"] for v in per_family.values())
        figures["embedders"][name] = row  # type: ignore[index]
    combined = [c for c in args.combined.split(",") if c]
    if combined:
        missing = [c for c in combined if c not in per_space]
        if missing:
            raise SystemExit(f"--combined names spaces not in --embedders: {', '.join(missing)}")
        # Min-p over the spaces, as the copies check combines them: each copy's statistic is its
        # smallest conformal p-value against the null; each null image's, against the null
        # without itself. The threshold is the null statistic's FPR quantile (from below).
        def pvalues(x: np.ndarray, null: np.ndarray, leave_out: bool) -> np.ndarray:
            ge = (null[None, :] >= x[:, None]).sum(axis=1) - (1 if leave_out else 0)
            return (1 + ge) / (len(null) + (0 if leave_out else 1))

        weights = [float(Fraction(w)) for w in args.weights.split(",") if w] or [1.0] * len(combined)
        if len(weights) != len(combined) or min(weights) <= 0:
            raise SystemExit("--weights: one positive weight per --combined space")
        null_stat = np.min([pvalues(per_space[c][0], per_space[c][0], True) / w for c, w in zip(combined, weights)], axis=0)
        copy_stat = np.min([pvalues(per_space[c][1], per_space[c][0], False) / w for c, w in zip(combined, weights)], axis=0)
        row = {"spaces": combined, "weights": weights}
        print(f"\ncombination ({' + '.join(combined)}, {'weighted ' + args.weights + ' ' if args.weights else ''}min-p):")
        per_family = {}
        for fpr in fprs:
            cut = float(np.quantile(null_stat, fpr, method="lower"))
            row[f"realised_fpr@{fpr}"] = float((null_stat < cut).mean())
            row[f"cut@{fpr}"] = cut
        for family in transforms.FAMILIES:
            sel = families_arr == family
            per_family[family] = {f"recall@{fpr}": float((copy_stat[sel] < row[f"cut@{fpr}"]).mean()) for fpr in fprs}
            print(family.ljust(10) + "".join(f"{per_family[family][f'recall@{fpr}']:18.1%}" for fpr in fprs))
        row["families"] = per_family
        row["min_recall@0.01"] = min(v["recall@0.01"] for v in per_family.values())
        figures["combined"] = row
    print("\n* = held out of copydetect's training augmentations")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
