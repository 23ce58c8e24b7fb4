"""Speed and memory of privaudit.metrics' PRDC and FID against their reference implementations.

    .venv/bin/python benchmarks/quality.py                 # N = 10k, 20k, 100k (~10 min on 2 idle cores)
    .venv/bin/python benchmarks/quality.py --sizes 10000   # a quick run

Every measurement runs in a fresh subprocess, so that its peak memory (the child's
``ru_maxrss``) is its own. Measured in the same run:

Up to N = 20,000 every task runs twice, alternating, and the faster run counts (the machine may be
shared); at 100,000 once.

* **PRDC** on two N(0, I) sets of N x 512 float32 at k = 5: ``privaudit.metrics.prdc`` against
  the ``prdc`` package (0.2, Naeem et al.'s code, three full N x N distance matrices), and
  against the floor of any exact PRDC: the three N x N x 512 matrix products (real x real,
  fake x fake, real x fake), timed as tiled float32 ``torch`` products that keep no N x N
  matrix. ``prdc`` is not run above 20,000: its memory grows as ~12 bytes x N² (11 GB at 30k on
  this machine type), so its failure point is extrapolated from its measured peaks.
* **FID** on two N x 2048 float32 sets: ``privaudit.metrics.fid`` against pytorch-fid's
  ``calculate_frechet_distance`` on ``np.mean``/``np.cov`` statistics (``scipy.linalg.sqrtm``).
  Both the whole computation (statistics + distance) and the distance from statistics alone.

Ends with one line holding a JSON object of every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time

PRDC_DIM = 512
FID_DIM = 2048
PRDC_REFERENCE_MAX_N = 20_000


def _data(n: int, d: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d), dtype=np.float32)


def _rss_now() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _run(task: str, real, fake) -> dict:
    """The timed computation of ``task`` (imports already done)."""
    import numpy as np

    out: dict = {}
    t0 = time.perf_counter()
    if task == "prdc_ours":
        from privaudit.metrics import prdc

        r = prdc(real, fake, k=5)
        out["values"] = [r.precision, r.recall, r.density, r.coverage]
    elif task == "prdc_ref":
        from prdc import compute_prdc

        with contextlib.redirect_stdout(io.StringIO()):
            r = compute_prdc(real, fake, 5)
        out["values"] = [float(r[k]) for k in ("precision", "recall", "density", "coverage")]
    elif task in ("floor", "floor1"):
        import torch

        n = len(real)
        a, b = torch.from_numpy(real), torch.from_numpy(fake)
        pairs = [(a, a), (b, b), (a, b)] if task == "floor" else [(a, b)]
        tile = 4096
        with torch.inference_mode():
            for x, y in pairs:
                for i in range(0, n, tile):
                    for j in range(0, n, tile):
                        x[i : i + tile] @ y[j : j + tile].T
        out["products_timed"] = len(pairs)
    elif task == "fid_ours":
        from privaudit.metrics import frechet_distance, gaussian_stats

        s1, s2 = gaussian_stats(real), gaussian_stats(fake)
        out["stats_seconds"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        out["value"] = frechet_distance(s1, s2)
        out["distance_seconds"] = time.perf_counter() - t1
    elif task == "fid_ref":
        from scipy import linalg

        mu1, mu2 = np.mean(real, axis=0), np.mean(fake, axis=0)
        s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
        out["stats_seconds"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        # pytorch-fid 0.3 calculate_frechet_distance (its eps retry is never needed here).
        diff = mu1 - mu2
        covmean = linalg.sqrtm(s1.dot(s2))
        covmean = covmean.real
        out["value"] = float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
        out["distance_seconds"] = time.perf_counter() - t1
    else:
        raise SystemExit(f"unknown task {task}")
    out["seconds"] = time.perf_counter() - t0
    return out


def worker(task: str, n: int) -> dict:
    """One measurement in this process: a small warm-up run first (imports, lazy imports inside
    the functions, thread pools), then the timed run on N samples."""
    import numpy as np

    d = FID_DIM if task.startswith("fid") else PRDC_DIM
    _run(task, _data(300, d, 3), _data(300, d, 4))
    real, fake = _data(n, d, 1), _data(n, d, 2)
    if task.startswith("fid"):
        fake = fake * np.float32(1.1) + np.float32(0.05)
    before = _rss_now()
    out = {"task": task, "n": n, "d": d, "rss_before_bytes": before}
    out.update(_run(task, real, fake))
    return out


def measure(task: str, n: int, timeout: float) -> dict:
    """Run one task in a subprocess; add its peak RSS."""
    cmd = [sys.executable, __file__, "--worker", task, str(n)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t_start = time.perf_counter()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"task": task, "n": n, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"task": task, "n": n, "error": (stderr.strip().splitlines() or ["?"])[-1], "wall_seconds": time.perf_counter() - t_start}
    # The worker reports its own peak (ru_maxrss of RUSAGE_SELF): RUSAGE_CHILDREN here would
    # give the largest peak of all children so far, not this one's.
    return json.loads(stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,20000,100000", help="comma-separated N (default 10000,20000,100000)")
    parser.add_argument("--worker", nargs=2, metavar=("TASK", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement before it is abandoned")
    parser.add_argument("--metrics", default="prdc,fid", help="which to measure: prdc, fid or both (default prdc,fid)")
    args = parser.parse_args()
    if args.worker:
        out = worker(args.worker[0], int(args.worker[1]))
        out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps(out))
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    gb = 1024**3
    with open("/proc/meminfo") as handle:
        mem_total = int(next(line for line in handle if line.startswith("MemTotal")).split()[1]) * 1024
    runs: list[dict] = []
    load_start = os.getloadavg()[0]
    print(
        f"privaudit quality benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, {mem_total / gb:.1f} GB, "
        f"Python {platform.python_version()}, load average {load_start:.1f}"
    )

    def show(r: dict) -> None:
        if "error" in r:
            print(f"  {r['task']:10s} N={r['n']:>7,}  FAILED: {r['error']}", flush=True)
            return
        extra = ""
        if "distance_seconds" in r:
            extra = f"  (statistics {r['stats_seconds']:.2f} s, distance {r['distance_seconds']:.2f} s, FID {r['value']:.6f})"
        if "values" in r:
            extra = "  P/R/D/C " + " / ".join(f"{v:.4f}" for v in r["values"])
        print(
            f"  {r['task']:10s} N={r['n']:>7,}  {r['seconds']:8.2f} s  peak {r['peak_rss_bytes'] / gb:6.2f} GB"
            f" (data {r['rss_before_bytes'] / gb:.2f} GB){extra}",
            flush=True,
        )

    # Other processes share these cores, so up to 20k every task runs twice, the tasks of one
    # size alternating, and the faster run of each counts (the same for ours and the
    # references). At 100k each runs once.
    which = set(args.metrics.split(","))
    print(f"PRDC, N x {PRDC_DIM} float32, k = 5")
    for n in sizes if "prdc" in which else []:
        small = n <= PRDC_REFERENCE_MAX_N
        tasks = ["prdc_ours", "floor", "prdc_ref"] * 2 if small else ["prdc_ours", "floor1"]
        for task in tasks:
            r = measure(task, n, args.timeout)
            runs.append(r)
            show(r)
    print(f"FID, N x {FID_DIM} float32")
    for n in sizes if "fid" in which else []:
        for task in ["fid_ours", "fid_ref"] * (2 if n <= PRDC_REFERENCE_MAX_N else 1):
            r = measure(task, n, args.timeout)
            runs.append(r)
            show(r)

    def get(task: str, n: int) -> dict | None:
        """The fastest successful run of ``task`` at ``n``."""
        done = [r for r in runs if r["task"] == task and r["n"] == n and "error" not in r]
        return min(done, key=lambda r: r["seconds"]) if done else None

    figures: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "mem_total_gb": round(mem_total / gb, 1),
        # Other processes share these cores: ratios are measured back to back, absolute
        # seconds depend on the load.
        "load_average_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "runs": runs,
    }
    print("Ratios (measured in this run):")
    ratios = {}
    for n in sizes:
        ours, ref = get("prdc_ours", n), get("prdc_ref", n)
        floor = get("floor", n) or get("floor1", n)
        if ours and floor:
            floor_s = floor["seconds"] * 3 / floor["products_timed"]
            ratios[f"prdc_over_floor_{n}"] = ours["seconds"] / floor_s
            note = "" if floor["products_timed"] == 3 else " (floor: one product timed, x3)"
            print(f"  PRDC N={n:,}: {ratios[f'prdc_over_floor_{n}']:.2f}x the three-product floor ({floor_s:.1f} s){note}")
        if ours and ref:
            ratios[f"prdc_speedup_vs_reference_{n}"] = ref["seconds"] / ours["seconds"]
            ratios[f"prdc_memory_ratio_{n}"] = ref["peak_rss_bytes"] / ours["peak_rss_bytes"]
            same = all(abs(a - b) <= 1e-5 * max(1.0, abs(b)) for a, b in zip(ours["values"], ref["values"]))
            print(
                f"  PRDC N={n:,}: {ratios[f'prdc_speedup_vs_reference_{n}']:.1f}x faster than prdc, "
                f"{ratios[f'prdc_memory_ratio_{n}']:.1f}x less peak memory; same four values: {same}"
            )
        if ours and n == max(sizes):
            print(f"  PRDC N={n:,}: peak memory {ours['peak_rss_bytes'] / gb:.2f} GB (input data {ours['rss_before_bytes'] / gb:.2f} GB)")
        fo, fr = get("fid_ours", n), get("fid_ref", n)
        if fo and fr:
            def fastest(task: str, key: str) -> float:
                return min(r[key] for r in runs if r["task"] == task and r["n"] == n and "error" not in r)

            ratios[f"fid_speedup_total_{n}"] = fr["seconds"] / fo["seconds"]
            ratios[f"fid_speedup_distance_{n}"] = fastest("fid_ref", "distance_seconds") / fastest("fid_ours", "distance_seconds")
            rel = abs(fo["value"] - fr["value"]) / abs(fr["value"])
            ratios[f"fid_relative_difference_{n}"] = rel
            print(
                f"  FID N={n:,}: distance from statistics {ratios[f'fid_speedup_distance_{n}']:.1f}x faster than sqrtm, "
                f"statistics + distance {ratios[f'fid_speedup_total_{n}']:.1f}x; relative difference {rel:.1e}"
            )
    # prdc's failure point: fit peak = a + b N² through its measured peaks, solve for the memory.
    refs = [(r["n"], r["peak_rss_bytes"]) for r in runs if r["task"] == "prdc_ref" and "error" not in r]
    if len(refs) >= 2:
        (n1, p1), (n2, p2) = refs[0], refs[-1]
        b = (p2 - p1) / (n2**2 - n1**2)
        a = p1 - b * n1**2
        fail_n = int(((mem_total - a) / b) ** 0.5)
        figures["prdc_bytes_per_n2"] = b
        figures["prdc_extrapolated_failure_n"] = fail_n
        print(f"  prdc (reference): {b:.1f} bytes x N² + {a / gb:.2f} GB; runs out of this machine's {mem_total / gb:.0f} GB near N = {fail_n:,} (extrapolated; not run above {PRDC_REFERENCE_MAX_N:,})")
    figures["ratios"] = ratios
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
