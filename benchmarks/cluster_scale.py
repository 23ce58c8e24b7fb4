"""Per-worker throughput of the cluster path (Ray local mode) against the in-process path.

    OMP_NUM_THREADS=1 python benchmarks/cluster_scale.py [--workers 1,2] [--n-pixels 20000]
        [--n-imagenet 1000] [--n-knn 20000] [--dim 512]

For each worker count W: a local Ray instance with W CPUs (``--cluster local:W``) and, as the
baseline measured in the same run, the in-process path with W threads (torch and FAISS). It
times

* embedding phantom images at 64 px with ``pixels`` and ``imagenet`` (Ray Data map_batches,
  one actor per worker; the time includes starting the actors and shipping the pixels; the
  marginal rate between a job of n/4 and one of n images is the steady per-worker rate),
* one exact kNN pass, ``--n-knn`` queries against ``--n-knn`` base vectors of ``--dim``
  dimensions, k = 1 (one FAISS shard per worker),

and prints images/s, query-base pairs/s, both per worker, and the ratio cluster/in-process.
Finally it audits a small phantom study on the cluster with the default checks and embedders
to count how many N x N kNN passes (in units of training x training pairs) and how many
embedded images per input image an audit makes: the README's estimate of what a cluster of W
workers handles in an hour is built from these figures. The last line is one JSON object.

Ray's local mode runs the workers as processes of this machine: with 2 cores it shows the
overheads and per-worker rates, not a speed-up beyond 2 workers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time

import numpy as np


def _timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="worker counts of the local Ray instance (default 1,2)")
    parser.add_argument("--n-pixels", type=int, default=20000, help="images embedded with pixels (default 20000)")
    parser.add_argument("--n-imagenet", type=int, default=1000, help="images embedded with imagenet (default 1000)")
    parser.add_argument("--n-knn", type=int, default=20000, help="queries and base vectors of the kNN pass (default 20000)")
    parser.add_argument("--dim", type=int, default=512, help="dimension of the kNN vectors (default 512)")
    parser.add_argument("--size", type=int, default=64, help="phantom side in pixels (default 64)")
    args = parser.parse_args(argv)

    import faiss
    import ray
    import torch

    from privaudit import search
    from privaudit.cluster import ClusterBackend
    from privaudit.config import AuditConfig
    from privaudit.embed import get_embedder
    from privaudit.phantoms import make_study
    from privaudit.pipeline import audit

    n_images = max(args.n_pixels, args.n_imagenet)
    study = make_study(n_train_patients=n_images // 4 + 1, n_holdout_patients=4, n_synthetic=4, size=args.size, seed=0)
    images = list(study.train.images)[:n_images]
    rng = np.random.default_rng(0)
    base = rng.normal(size=(args.n_knn, args.dim)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = rng.normal(size=(args.n_knn, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    pairs = float(args.n_knn) ** 2
    embedders = {"pixels": (get_embedder("pixels"), args.n_pixels), "imagenet": (get_embedder("imagenet"), args.n_imagenet)}

    figures: dict[str, object] = {
        "image_size": args.size,
        "knn": {"queries": args.n_knn, "base": args.n_knn, "dim": args.dim, "k": 1},
        "ray": ray.__version__,
        "workers": {},
    }
    print(f"phantoms at {args.size} px; kNN {args.n_knn} x {args.n_knn} x {args.dim}-d, k = 1; Ray {ray.__version__}, local mode")
    for w in [int(x) for x in args.workers.split(",")]:
        torch.set_num_threads(w)
        faiss.omp_set_num_threads(w)
        row: dict[str, dict[str, float]] = {}
        # The in-process baseline with as many threads as the cluster has workers.
        for name, (emb, n) in embedders.items():
            emb.embed(images[:64])  # warm-up
            t, _ = _timed(lambda: emb.embed(images[:n]))
            row[f"embed_{name}"] = {"n": n, "in_process_s": t, "in_process_per_s": n / t}
        t, expected = _timed(lambda: search.knn(queries, base, k=1))
        row["knn"] = {"in_process_s": t, "in_process_pairs_per_s": pairs / t}

        temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        try:
            t_start = time.perf_counter()
            with ClusterBackend(f"local:{w}", temp_dir=temp) as backend:
                started = time.perf_counter() - t_start
                for name, (emb, n) in embedders.items():
                    quarter = max(1, n // 4)
                    t_quarter, _ = _timed(lambda: backend.embed(emb, images[:quarter]))
                    t, vectors = _timed(lambda: backend.embed(emb, images[:n]))
                    r = row[f"embed_{name}"]
                    # The marginal rate (the extra images over the extra time of a job 4x the size)
                    # is the workers' steady throughput, net of starting the job's actors.
                    marginal = (n - quarter) / max(t - t_quarter, 1e-3)
                    r.update(cluster_s=t, cluster_quarter_s=t_quarter, cluster_per_s=n / t,
                             cluster_per_worker_per_s=n / t / w, marginal_per_worker_per_s=marginal / w,
                             job_start_s=max(0.0, t - n / marginal), cluster_over_in_process=t / r["in_process_s"])
                t, found = _timed(lambda: backend.knn(queries, base, k=1), repeat=2)
                assert np.array_equal(found.indices, expected.indices) or np.allclose(found.similarities, expected.similarities, atol=1e-6)
                row["knn"].update(cluster_s=t, cluster_pairs_per_s=pairs / t, cluster_pairs_per_worker_per_s=pairs / t / w,
                                  cluster_over_in_process=t / row["knn"]["in_process_s"])
                row["start_s"] = {"ray_init": started}
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        figures["workers"][str(w)] = row
        print(f"\n{w} worker(s) (ray.init {row['start_s']['ray_init']:.1f} s):")
        for name in embedders:
            r = row[f"embed_{name}"]
            print(f"  embed {name:8s} {r['n']:6d} images: in-process {r['in_process_per_s']:8.0f}/s | cluster {r['cluster_per_s']:8.0f}/s "
                  f"({r['cluster_per_worker_per_s']:.0f}/s per worker; marginal {r['marginal_per_worker_per_s']:.0f}/s per worker, "
                  f"job start {r['job_start_s']:.1f} s) | cluster/in-process time {r['cluster_over_in_process']:.2f}x")
        k = row["knn"]
        print(f"  kNN pass: in-process {k['in_process_s']:.2f} s ({k['in_process_pairs_per_s']:.3g} pairs/s) | cluster {k['cluster_s']:.2f} s "
              f"({k['cluster_pairs_per_worker_per_s']:.3g} pairs/s per worker) | cluster/in-process time {k['cluster_over_in_process']:.2f}x")

    # How much work one audit makes, per training image: counted on the cluster itself.
    small = make_study(n_train_patients=100, n_holdout_patients=20, scans_per_patient=4, n_synthetic=400, size=32, seed=0)
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    try:
        with ClusterBackend("local:2", temp_dir=temp) as backend, backend.activate():
            t0 = time.perf_counter()
            result = audit(small.train, small.leaky, small.holdout, config=AuditConfig(), cache=False)
            elapsed = time.perf_counter() - t0
            n_train = len(small.train)
            inputs = len(small.train) + len(small.leaky) + len(small.holdout)
            work = {
                "train": n_train, "synthetic": len(small.leaky), "holdout": len(small.holdout),
                "checks": list(AuditConfig().checks), "embedders": list(AuditConfig().embedders),
                "searches": backend.searches, "knn_passes_in_train_squared": backend.pairs / n_train**2,
                "images_embedded_per_input_image": backend.images_embedded / inputs, "seconds": elapsed,
                "verdict": result.verdict.status.value,
            }
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    figures["audit_work"] = work
    print(f"\ndefault audit ({', '.join(work['checks'])}; {', '.join(work['embedders'])}) of {n_train} training + "
          f"{work['synthetic']} synthetic + {work['holdout']} holdout images on local:2: {work['searches']} kNN searches "
          f"= {work['knn_passes_in_train_squared']:.2f} x (training x training) pairs, "
          f"{work['images_embedded_per_input_image']:.2f} embeddings per input image, {elapsed:.0f} s")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
