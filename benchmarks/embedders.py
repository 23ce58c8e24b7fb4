"""Embedder throughput on this CPU, and an audit with a cold vs a warm embedding cache.

    python benchmarks/embedders.py [--n 2000] [--size 64]

For each embedder: images per second at its declared input size (after one warm-up batch),
and copydetect's fitting time. Then the same phantom audit twice, first with an empty cache and
then with the cache the first run filled; the ratio cold/warm is measured in the same run. The
last line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from privaudit.config import AuditConfig
from privaudit.embed import EmbeddingCache, get_embedder
from privaudit.phantoms import make_study
from privaudit.pipeline import audit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="images per timing (default 2000)")
    parser.add_argument("--size", type=int, default=64, help="phantom side in pixels (default 64)")
    parser.add_argument("--embedders", default="pixels,imagenet,copydetect")
    args = parser.parse_args(argv)

    study = make_study(n_train_patients=args.n // 8, n_holdout_patients=args.n // 16, n_synthetic=args.n // 2, size=args.size, seed=0)
    images = list(study.train.images) + list(study.leaky.images)
    images = images[: args.n]
    figures: dict[str, object] = {"n": len(images), "image_size": args.size, "torch_threads": torch.get_num_threads(), "embedders": {}}
    print(f"{len(images)} phantom images at {args.size} px, {torch.get_num_threads()} torch threads")
    for name in args.embedders.split(","):
        emb = get_embedder(name)
        row: dict[str, float] = {}
        if emb.requires_fit:
            t0 = time.perf_counter()
            emb.fit(study.train, seed=0, cache=None)
            row["fit_s"] = time.perf_counter() - t0
            row["fit_images"] = emb.fit_stats.get("images", float("nan"))
            row["fit_steps"] = emb.fit_stats.get("steps", float("nan"))
        emb.embed(images[:64])  # warm-up
        t0 = time.perf_counter()
        emb.embed(images)
        row["images_per_s"] = len(images) / (time.perf_counter() - t0)
        size = "x".join(map(str, emb.preprocessing.size))
        extra = f", fit {row['fit_s']:.1f} s on {row['fit_images']:.0f} images ({row['fit_steps']:.0f} steps)" if "fit_s" in row else ""
        print(f"{name:11s} input {size:>7s}: {row['images_per_s']:9.1f} images/s{extra}")
        figures["embedders"][name] = row  # type: ignore[index]

    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(tmp)
        cfg = AuditConfig(embedders=("imagenet",))
        t0 = time.perf_counter()
        audit(study.train, study.leaky, study.holdout, config=cfg, cache=cache)
        cold = time.perf_counter() - t0
        cache = EmbeddingCache(tmp)
        t0 = time.perf_counter()
        warm_result = audit(study.train, study.leaky, study.holdout, config=cfg, cache=cache)
        warm = time.perf_counter() - t0
    n_audit = len(study.train) + len(study.leaky) + len(study.holdout)
    assert warm_result.run is not None and warm_result.run.embedded["imagenet"].embedded == 0
    print(f"audit of {n_audit} images in the imagenet space: cold cache {cold:.1f} s, warm cache {warm:.1f} s, ratio cold/warm {cold / warm:.1f}x")
    figures["audit"] = {"images": n_audit, "cold_s": cold, "warm_s": warm, "cold_over_warm": cold / warm}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
