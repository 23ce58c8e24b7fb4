"""kNN of N synthetic x N training vectors (512-d): FAISS exact, FAISS approximate (IVF, re-ranked
exactly) and the two references a user would otherwise use (chunked numpy brute force,
scikit-learn ``NearestNeighbors``), against the raw float32 matrix product, in the same run.

Every method runs in its own child process on the same seeded vectors (written once to a
temporary folder and loaded by each child), so that its peak resident memory
(tracemalloc does not see FAISS's or BLAS's memory) is its own. Peak RSS is the kernel's high-water mark of the child (``VmHWM``; ``ru_maxrss`` would
carry the parent's peak across fork and exec). Printed per method: time, peak RSS and the RSS
of the loaded data alone (the rest is the method's), its CPU seconds (all threads; steadier
than wall time on a shared machine, and in the JSON line), the ratio to the matrix product and to FAISS exact, and the tail agreement.

**Data.** Clustered unit vectors: ``--clusters`` centres, each vector a centre plus Gaussian
noise (two vectors of one cluster have cosine ~0.5, of two clusters ~0). The first
``--copies`` synthetic vectors are planted near-copies of random training vectors, at cosine
similarities spread evenly over 0.80..0.995; the copy threshold ``--threshold`` (0.9) splits
them about in half, and no unrelated pair comes near it. Few, large clusters are the hard case
for IVF (many lists per cluster, so a near-copy's list is one of several nearly equal ones).

**Tail agreement.** The pairs (query, most similar training vector) that FAISS exact puts at or
above the threshold are "the copies"; for every other method the script reports how many of them
it found (the same training vector as top-1) and how many pairs it put above the threshold that
exact search did not: "calls the same copies" means all found and none extra.

**Raw product.** ``syn[chunk] @ train.T`` in float32 for every chunk of 4,096 queries, with no
top-k: the floor that any exact search must pay.

Usage: ``python benchmarks/copy_search.py [--sizes 10000,100000] [--threads 2]
[--methods matmul,faiss_exact,faiss_ivf,numpy,sklearn]``. Thread counts are set for every
library in each child (OMP/OpenBLAS/MKL variables, ``faiss.omp_set_num_threads``, sklearn's
``n_jobs``). The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = ("matmul", "faiss_exact", "faiss_ivf", "numpy", "sklearn")
CHUNK = 4096


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_data(n: int, d: int, clusters: int, n_copies: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training and synthetic vectors, and the sources of the planted near-copies."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(clusters, d)))

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, d), dtype=np.float32)
        for s in range(0, m, 10_000):  # bounded temporaries
            e = min(m, s + 10_000)
            out[s:e] = unit(centres[rng.integers(0, clusters, e - s)] + rng.normal(size=(e - s, d)).astype(np.float32) / np.sqrt(d))
        return out

    train, syn = draw(n), draw(n)
    n_copies = min(n_copies, n)
    src = rng.choice(n, n_copies, replace=False)
    target = np.linspace(0.80, 0.995, n_copies)
    eps = np.sqrt(1.0 / target**2 - 1.0)  # cos(x, x + eps z) ~ 1 / sqrt(1 + eps^2) for z ~ N(0, I/d)
    syn[:n_copies] = unit(train[src] + eps[:, None].astype(np.float32) * rng.normal(size=(n_copies, d)).astype(np.float32) / np.sqrt(d))
    return train, syn, src


# ----------------------------------------------------------------- children (one method each)


def run_method(method: str, folder: Path, k: int, threads: int, nprobe: int | None) -> None:
    """In a child process: load the data, run one method, save top-k, print one JSON line."""
    train = np.load(folder / "train.npy")
    syn = np.load(folder / "syn.npy")
    import resource

    data_rss = _status_mb("VmRSS")
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage0.ru_utime + usage0.ru_stime
    t0 = time.perf_counter()
    extra: dict[str, object] = {}
    if method == "matmul":
        checksum = 0.0
        for s in range(0, len(syn), CHUNK):
            block = syn[s : s + CHUNK] @ train.T
            checksum += float(block[:, 0].sum())  # keep the product alive; no top-k
        sims = idx = None
    elif method == "faiss_exact":
        import faiss

        from privaudit.search import knn

        faiss.omp_set_num_threads(threads)
        nb = knn(syn, train, k=k, index="exact")
        sims, idx = nb.similarities, nb.indices
    elif method.startswith("faiss_ivf"):  # "faiss_ivf" (the library's defaults) or "faiss_ivf@NPROBE"
        if "@" in method:
            nprobe = int(method.split("@")[1])
        import faiss

        from privaudit.search import SearchIndex

        faiss.omp_set_num_threads(threads)
        index = SearchIndex(train, index="ivf", seed=0, nprobe=nprobe)
        extra["build_s"] = round(time.perf_counter() - t0, 3)
        extra.update(nlist=index.info.nlist, nprobe=index.info.nprobe, train_points=index.info.train_points)
        nb = index.search(syn, k=k)
        sims, idx = nb.similarities, nb.indices
    elif method == "numpy":
        sims = np.empty((len(syn), k), dtype=np.float32)
        idx = np.empty((len(syn), k), dtype=np.int64)
        for s in range(0, len(syn), CHUNK):
            block = syn[s : s + CHUNK] @ train.T
            top = np.argpartition(-block, k - 1, axis=1)[:, :k]
            val = np.take_along_axis(block, top, axis=1)
            order = np.argsort(-val, axis=1)
            idx[s : s + CHUNK] = np.take_along_axis(top, order, axis=1)
            sims[s : s + CHUNK] = np.take_along_axis(val, order, axis=1)
    elif method == "sklearn":
        from sklearn.neighbors import NearestNeighbors

        # The way tabular privacy tools write it: Euclidean NearestNeighbors, algorithm "auto";
        # for unit vectors cosine = 1 - d^2 / 2.
        nn = NearestNeighbors(n_neighbors=k, n_jobs=threads).fit(train)
        dist, idx = nn.kneighbors(syn)
        sims = (1.0 - dist**2 / 2.0).astype(np.float32)
        extra["algorithm"] = nn._fit_method
    else:
        raise SystemExit(f"unknown method {method}")
    elapsed = time.perf_counter() - t0
    peak = _status_mb("VmHWM")
    if sims is not None:
        np.save(folder / f"{method}_sims.npy", sims[:, 0])
        np.save(folder / f"{method}_idx.npy", idx[:, 0])
    # CPU seconds of this process (all its threads): on a shared machine, a steadier measure of
    # the work than wall time, which other users' load inflates.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    row = json.dumps({"method": method, "time_s": round(elapsed, 3), "cpu_s": round(cpu, 2), "peak_rss_mb": round(peak, 1), "data_rss_mb": round(data_rss, 1), **extra})
    # Also on disk: a run interrupted later (a slow reference on a busy machine) keeps its rows.
    (folder / f"{method}.json.tmp").write_text(row)
    os.replace(folder / f"{method}.json.tmp", folder / f"{method}.json")
    print(row)


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ----------------------------------------------------------------- parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=5, help="neighbours per query (the issue's figures are top-5)")
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--copies", type=int, default=1000)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nprobe", type=int, default=None, help="override the library's IVF nprobe (exploration only)")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_method(args.child[0], Path(args.child[1]), args.k, args.threads, args.nprobe)
        return

    import faiss
    import sklearn

    from privaudit.search import APPROXIMATE_FROM

    methods = [m for m in args.methods.split(",") if m]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    figures: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"), "threads": args.threads, "dim": args.dim, "k": args.k, "clusters": args.clusters,
        "copies": args.copies, "threshold": args.threshold, "faiss": faiss.__version__, "sklearn": sklearn.__version__,
        "numpy": np.__version__, "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0], "approximate_from": APPROXIMATE_FROM, "results": [],
    }
    print(f"copy_search benchmark: d={args.dim}, top-{args.k}, {args.clusters} clusters, {args.copies} planted near-copies "
          f"(cos 0.80..0.995), copy threshold {args.threshold}, {args.threads} thread(s), one child process per method")
    print(f"{'N':>7} {'method':<14} {'time s':>8} {'peak RSS MB':>12} {'data MB':>8} {'/matmul':>8} {'/exact':>7} {'tail found':>11} {'extra':>6}")
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="copy_search_") as tmp:
            folder = Path(tmp)
            train, syn, _ = make_data(n, args.dim, args.clusters, args.copies, args.seed)
            np.save(folder / "train.npy", train)
            np.save(folder / "syn.npy", syn)
            del train, syn
            rows = {}
            for method in methods:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", method, str(folder), "--k", str(args.k), "--threads", str(args.threads)]
                    + (["--nprobe", str(args.nprobe)] if args.nprobe else []),
                    env=env, capture_output=True, text=True, check=False,
                )
                if out.returncode != 0:
                    raise SystemExit(f"{method} failed at N={n}:\n{out.stderr[-2000:]}")
                rows[method] = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{n:>7} {method:<14} done: {rows[method]['time_s']:.2f} s ({rows[method].get('cpu_s')} CPU s), "
                      f"peak RSS {rows[method]['peak_rss_mb']:.0f} MB", flush=True)
            exact_s = exact_i = None
            if "faiss_exact" in rows:
                exact_s, exact_i = np.load(folder / "faiss_exact_sims.npy"), np.load(folder / "faiss_exact_idx.npy")
            for method in methods:
                row = {"n": n, **rows[method]}
                if "matmul" in rows:
                    row["ratio_vs_matmul"] = round(row["time_s"] / rows["matmul"]["time_s"], 3)
                if "faiss_exact" in rows:
                    row["ratio_vs_exact"] = round(row["time_s"] / rows["faiss_exact"]["time_s"], 3)
                tail_text = extra_text = ""
                if exact_s is not None and method != "matmul":
                    s, i = np.load(folder / f"{method}_sims.npy"), np.load(folder / f"{method}_idx.npy")
                    tail = exact_s >= args.threshold
                    # Found: the same training vector, or a tie to float32 rounding.
                    same = (i == exact_i) | (np.abs(s - exact_s) <= 1e-5)
                    found = int((tail & same).sum())
                    extra = int(((s >= args.threshold) & ~tail & ~same).sum())
                    row.update(tail_exact=int(tail.sum()), tail_found=found, tail_extra=extra,
                               same_copies=bool(found == tail.sum() and extra == 0), top1_agreement=round(float(same.mean()), 4))
                    tail_text, extra_text = f"{found}/{int(tail.sum())}", str(extra)
                figures["results"].append(row)  # type: ignore[union-attr]
                print(f"{n:>7} {method:<14} {row['time_s']:>8.2f} {row['peak_rss_mb']:>12.0f} {row['data_rss_mb']:>8.0f} "
                      f"{row.get('ratio_vs_matmul', float('nan')):>7.2f}x {row.get('ratio_vs_exact', float('nan')):>6.2f}x {tail_text:>11} {extra_text:>6}", flush=True)
            for ivf in [m for m in methods if m.startswith("faiss_ivf")]:
                if "faiss_exact" not in rows:
                    break
                speedup = rows["faiss_exact"]["time_s"] / rows[ivf]["time_s"]
                print(f"{n:>7} {ivf}: approximate is {speedup:.1f}x faster than exact (build {rows[ivf].get('build_s')} s, "
                      f"nlist {rows[ivf].get('nlist')}, nprobe {rows[ivf].get('nprobe')})", flush=True)
    figures["speedup_note"] = "time of faiss_exact / time of faiss_ivf per N: see ratio_vs_exact"
    figures["loadavg_end"] = os.getloadavg()[0]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
