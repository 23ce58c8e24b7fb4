"""Whole-audit scaling: wall time and peak memory per stage at N = 1k, 10k (and 100k) images.

For each N: a seeded phantom study at 64 x 64 px with N training images (N/4 patients x 4 scans),
N synthetic images (the leaky set: 20 % copies) and N/5 holdout images, written once in the
``--format`` chosen: ``npy`` (one float32 ``(N, 64, 64)`` array per set, read from disk on
access above the pixel budget; no patient ids, which an ``.npy`` cannot hold, so ``membership``
is not assessed), ``png`` (8-bit PNG files with a manifest CSV per set carrying patient ids, as
a hospital's export would look; decoded again on access above the budget) or ``npz`` (arrays
with patient ids; a zip cannot be read in place, so the stored arrays are held in memory). Then
``privaudit audit`` runs in a child process twice, with a cold embedding cache (a new folder) and
again with the warm one. The per-stage times and peaks come from the child's ``results.json``
(``run.stages``: the high-water mark is reset per stage on Linux); the peak of what follows the
last stage (the verdict, then writing ``results.json`` and ``report.html``) from ``os.wait4``;
the run's peak RSS is the largest of them. The baseline measured in the same run is a raw
float32 N x N matrix product at the pixel space's dimension (what one exact kNN pass over the
sets costs at least), so the kNN stages can be read against it; every search recorded in
``run.searches`` is read against the product at its own dimension, also measured in the run. How each stage grows with N is
the exponent of a power law fitted over the sizes run.

Usage::

    python benchmarks/audit_scale.py                       # N = 1000, 10000
    python benchmarks/audit_scale.py --sizes 1000,10000,100000 --checks copies,quality
    python benchmarks/audit_scale.py --sizes 10000 --checks copies,membership --format png
    python benchmarks/audit_scale.py --sizes 1000,10000,100000 --checks copies,metadata,quality \
        --format png --study-dir /work/study       # the README's 100k run (~50 min with the study)

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


FORMATS = ("npy", "png", "npz")


def write_study(n: int, folder: Path | str, seed: int = 0, fmt: str = "npy") -> dict[str, Path]:
    from privaudit.phantoms import make_study

    folder = Path(folder)
    t = time.perf_counter()
    study = make_study(
        n_train_patients=max(1, n // 4), n_holdout_patients=max(1, n // 20), scans_per_patient=4,
        n_synthetic=n, size=64, seed=seed,
    )
    paths = {}
    for role, s in (("train", study.train), ("synthetic", study.leaky), ("holdout", study.holdout)):
        if fmt == "png":
            paths[role] = _write_png_set(s, folder, role)
            continue
        path = folder / f"{role}.{fmt}"
        images = np.stack(s.images).astype(np.float32)
        if fmt == "npy":
            np.save(path, images)
        else:
            arrays = {"images": images}
            if s.patient_ids is not None:
                arrays["patient_id"] = np.array(s.patient_ids)
            np.savez(path, **arrays)
        paths[role] = path
    del study
    print(f"  study N={n}: generated and written as {fmt} in {time.perf_counter() - t:.1f} s", flush=True)
    return paths


def study_paths(n: int, folder: str, fmt: str) -> dict[str, str]:
    """:func:`write_study` for :func:`in_child`: the paths as text."""
    return {role: str(path) for role, path in write_study(n, Path(folder), fmt=fmt).items()}


def _write_png_set(images, folder: Path, role: str) -> Path:
    """8-bit PNGs under ``folder/role/`` and a manifest ``folder/role.csv`` (path, patient_id, label)."""
    import csv

    from PIL import Image

    (folder / role).mkdir(exist_ok=True)
    manifest = folder / f"{role}.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "patient_id", "label"] if images.patient_ids is not None else ["path", "label"])
        for k, img in enumerate(images.images):
            rel = f"{role}/{k:06d}.png"
            Image.fromarray(np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8), mode="L").save(folder / rel)
            label = images.labels[k] if images.labels else "0"
            writer.writerow([rel, images.patient_ids[k], label] if images.patient_ids is not None else [rel, label])
    return manifest


def kept_study(n: int, study_dir: Path, fmt: str) -> dict[str, Path] | None:
    """The paths of a study that an earlier run kept in ``study_dir`` (``--study-dir``), or None.

    ``paths.json`` is written only after every set was written, so a study whose generation was
    interrupted is made again."""
    marker = study_dir / f"n{n}-{fmt}" / "paths.json"
    if not marker.is_file():
        return None
    return {k: Path(v) for k, v in json.loads(marker.read_text()).items()}


def in_child(call: str) -> object:
    """Evaluate ``call`` (an expression on this module) in a fresh interpreter; return its JSON.

    The study and the baseline product are made in children so that this process stays small:
    a child's ``ru_maxrss`` starts from the high-water mark of the process it was forked from
    (the kernel carries it over at exec), so a parent holding the generated study would inflate
    every audit's figure by its own size.
    """
    code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import audit_scale as m; print(json.dumps(m.{call}))"
    done = subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.PIPE, text=True)
    lines = done.stdout.strip().splitlines()
    for line in lines[:-1]:
        print(line, flush=True)
    return json.loads(lines[-1])


def run_audit(paths: dict[str, Path], out: Path, cache: Path, checks: str, embedder: str, threads: int, budget: str | None,
              config: str | None = None) -> dict:
    cmd = [
        sys.executable, "-m", "privaudit", "audit", "--train", str(paths["train"]), "--synthetic", str(paths["synthetic"]),
        "--holdout", str(paths["holdout"]), "--checks", checks, "--embedder", embedder, "--out", str(out), "--force",
        "--cache-dir", str(cache),
    ] + (["--config", config] if config else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    if budget is not None:
        env["PRIVAUDIT_PIXEL_BUDGET_MB"] = budget
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):  # 1 = verdict fail: the leaky set should fail
        raise SystemExit(f"audit failed with exit code {code}: {err.strip()[-500:]}")
    results = json.loads((out / "results.json").read_text())
    run = results["run"]
    stages = {s["name"]: {"seconds": round(s["seconds"], 3), "peak_rss_mb": s["peak_rss_mb"] and round(s["peak_rss_mb"], 1)} for s in run["stages"]}
    # os.wait4's ru_maxrss is not the whole run's peak: the audit resets the kernel's high-water
    # mark at the start of every stage (privaudit.stages), so it covers the last stage
    # (verdict) and writing the outputs. The run's peak is the larger of it and every stage's.
    tail = usage.ru_maxrss / 1024  # KiB on Linux
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(max([tail] + [st["peak_rss_mb"] or 0.0 for st in stages.values()]), 1),
        "verdict_and_outputs_peak_rss_mb": round(tail, 1),
        "stages": stages,
        "embedded": run["embedded"],
        "checks": {name: c["status"] for name, c in results["checks"].items()},
        "searches": run.get("searches", []),
    }


def search_ratios(searches: list[dict], products: dict[int, float], n: int) -> list[dict]:
    """Each search beside the raw product it needs, scaled from the ``n x n x dim`` product
    measured in this run at the search's own dimension (``products``: dim -> seconds; a product
    at 64 dimensions is not 1/16 of one at 1,024, memory traffic weighs more there):
    ``n_queries x n_base`` of it for an exact or cluster search, half of that for a set in itself
    (``self``: the upper triangle of tiles). An IVF search and an index build need no such
    product (they are approximate by design): ratio None."""
    rows = []
    for t in searches:
        product_s = products.get(t["dim"])
        work = t["n_queries"] * t["n_base"] / (n * n)
        needed = None
        if product_s is not None and t["kind"] in ("exact", "cluster"):
            needed = product_s * work
        elif product_s is not None and t["kind"] == "self":
            needed = product_s * work / 2
        rows.append({**t, "product_s": None if needed is None else round(needed, 4),
                     "ratio": None if not needed else round(t["seconds"] / needed, 3)})
    return rows


def matmul_seconds(n: int, dim: int) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, dim), dtype=np.float32)
    b = rng.standard_normal((n, dim), dtype=np.float32)
    t = time.perf_counter()
    for start in range(0, n, 4096):  # bounded memory, as the kNN does
        a[start : start + 4096] @ b.T
    return time.perf_counter() - t


def exponent(sizes: list[int], values: list[float]) -> float | None:
    pts = [(np.log(n), np.log(v)) for n, v in zip(sizes, values) if v and v > 0]
    if len(pts) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--checks", default="copies,quality,membership,reid")
    ap.add_argument("--embedder", default="pixels")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--format", choices=FORMATS, default="npy", help="how the study is written (default npy)")
    ap.add_argument("--workdir", default=None, help="where to write the studies (default: a temporary folder)")
    ap.add_argument("--study-dir", default=None,
                    help="keep each generated study in DIR/n<N>-<format> and reuse it when it is already there "
                         "(generating 100k is ~15 min); the caches and outputs stay in the temporary folder")
    ap.add_argument("--config", default=None,
                    help="an audit configuration TOML passed to every audit (e.g. [embedder_options.identity] size = 64 "
                         "for reid on the 64-px phantoms)")
    ap.add_argument("--pixel-budget-mb", default=None,
                    help="PRIVAUDIT_PIXEL_BUDGET_MB for the audits (default: as set in the environment, else privaudit's default)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"audit_scale: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads; "
          f"checks {args.checks}; embedder {args.embedder}; inputs {args.format}", flush=True)
    figures: dict = {"threads": args.threads, "checks": args.checks, "embedder": args.embedder, "format": args.format,
                     "config": Path(args.config).read_text() if args.config else None,
                     "pixel_budget_mb": args.pixel_budget_mb, "sizes": {}}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        for n in sizes:
            folder = root / f"n{n}"
            folder.mkdir()
            paths = kept_study(n, Path(args.study_dir), args.format) if args.study_dir else None
            if paths is None:
                study = Path(args.study_dir) / f"n{n}-{args.format}" if args.study_dir else folder
                study.mkdir(parents=True, exist_ok=True)
                paths = {k: Path(v) for k, v in in_child(f"study_paths({n}, {str(study)!r}, {args.format!r})").items()}
                if args.study_dir:
                    (study / "paths.json").write_text(json.dumps({k: str(v) for k, v in paths.items()}))
            else:
                print(f"  study N={n}: reused from {args.study_dir}", flush=True)
            cache = folder / "cache"
            cold = run_audit(paths, folder / "cold", cache, args.checks, args.embedder, args.threads, args.pixel_budget_mb, args.config)
            warm = run_audit(paths, folder / "warm", cache, args.checks, args.embedder, args.threads, args.pixel_budget_mb, args.config)
            dim = 64 * 64 // 4  # the pixel embedder's dimension: 32 x 32
            mm = in_child(f"matmul_seconds({n}, {dim})")
            # The product at every other dimension a search ran in (e.g. reid's identity space).
            products = {dim: mm}
            for d in sorted({t["dim"] for t in warm["searches"] + cold["searches"]} - {dim}):
                products[d] = in_child(f"matmul_seconds({n}, {d})")
            warm["searches"] = search_ratios(warm["searches"], products, n)
            cold["searches"] = search_ratios(cold["searches"], products, n)
            figures["sizes"][n] = {"cold": cold, "warm": warm, "matmul_s": round(mm, 3),
                                   "products_s": {str(d): round(v, 3) for d, v in products.items()}}
            print(f"N={n}: cold {cold['wall_s']:.1f} s, peak {cold['peak_rss_mb']:.0f} MiB; warm {warm['wall_s']:.1f} s, "
                  f"peak {warm['peak_rss_mb']:.0f} MiB; one N x N x 1024 float32 product {mm:.2f} s", flush=True)
            for name, st in warm["stages"].items():
                print(f"    warm {name:<22} {st['seconds']:9.2f} s  {st['peak_rss_mb'] or float('nan'):8.0f} MiB"
                      f"  ({st['seconds'] / mm if mm else float('nan'):.1f}x the product)", flush=True)
            print(f"    warm verdict + writing outputs       {warm['verdict_and_outputs_peak_rss_mb']:8.0f} MiB", flush=True)
            print("    warm searches (kind, queries x base x dim, k: seconds, the product it needs, ratio):", flush=True)
            for t in warm["searches"]:
                need = f"{t['product_s']:8.2f} s  {t['ratio']:5.2f}x" if t["ratio"] is not None else "       (approximate)"
                print(f"      {t['stage']:<18} {t['kind']:<9} {t['n_queries']:>7} x {t['n_base']:>7} x {t['dim']:>5}, k={t['k']:<3}"
                      f" {t['seconds']:8.2f} s  {need}", flush=True)
            exact = [t for t in warm["searches"] if t["ratio"] is not None]
            if exact:
                spent, needed = sum(t["seconds"] for t in exact), sum(t["product_s"] for t in exact)
                warm["exact_searches"] = {"seconds": round(spent, 2), "product_s": round(needed, 2), "ratio": round(spent / needed, 3) if needed else None}
                print(f"    warm exact searches together: {spent:.2f} s for {needed:.2f} s of products"
                      f" ({spent / needed if needed else float('nan'):.2f}x)", flush=True)
    done = sorted(figures["sizes"])
    if len(done) >= 2:
        names = list(figures["sizes"][done[-1]]["warm"]["stages"])
        growth = {}
        for name in names:
            secs = [figures["sizes"][n]["warm"]["stages"].get(name, {}).get("seconds") for n in done]
            mem = [figures["sizes"][n]["warm"]["stages"].get(name, {}).get("peak_rss_mb") for n in done]
            growth[name] = {"time_exponent": exponent(done, secs), "memory_exponent": exponent(done, mem)}
        growth["whole audit (warm)"] = {
            "time_exponent": exponent(done, [figures["sizes"][n]["warm"]["wall_s"] for n in done]),
            "memory_exponent": exponent(done, [figures["sizes"][n]["warm"]["peak_rss_mb"] for n in done]),
        }
        figures["growth"] = growth
        print(f"growth with N over {done} (fitted power-law exponents; 1 = linear, 2 = quadratic):")
        for name, g in growth.items():
            te, me = g["time_exponent"], g["memory_exponent"]
            print(f"    {name:<24} time N^{te:.2f}  memory N^{me:.2f}" if te is not None and me is not None else f"    {name}: n/a")
    figures["benchmark_process_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
