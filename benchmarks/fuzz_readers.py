"""Coverage-guided fuzzing of privaudit's image readers with atheris (libFuzzer). Not run by CI.

    pip install atheris            # wheels for CPython 3.8-3.12 on Linux x86-64
    python benchmarks/fuzz_readers.py --seconds 300

The first input byte picks the file extension (.png .jpg .bmp .tif .dcm or none); the rest is the
file's content. Each input is written to a file and read with ``read_image`` and ``read_headers``:
the contract is that a file is either decoded into the working format or refused with
``UnreadableImage`` / ``HeaderError``. Any other exception (or a crash in native code) stops the
run and leaves the input in the artifact folder; turn it into a case in ``tests/test_corpus.py``.

The fuzzer runs in a child process (libFuzzer owns its process); this parent seeds it with one
valid file per format, parses libFuzzer's summary, re-reads any crashing input to name the
exception, and ends with one JSON line of figures. Python code of privaudit, Pillow's plugins,
tifffile and pydicom is instrumented for coverage; Pillow's C decoders are exercised but not
instrumented (no sanitizer build).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUFFIXES = (".png", ".jpg", ".bmp", ".tif", ".dcm", "")


def seeds() -> dict[str, bytes]:
    """One small valid file per format, prefixed with the byte that selects its extension."""
    import numpy as np
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    out = {}
    for name, fmt, img in (
        ("png", "PNG", Image.fromarray(grey)),
        ("png16", "PNG", Image.fromarray(grey.astype(np.uint16) * 200)),
        ("palette", "PNG", Image.fromarray(grey).convert("P")),
        ("jpg", "JPEG", Image.fromarray(grey)),
        ("bmp", "BMP", Image.fromarray(grey)),
    ):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        out[name] = bytes([SUFFIXES.index({"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp"}[fmt])]) + buf.getvalue()
    for name, arr, kw in (("tif", grey, {}), ("tif-zlib", grey, {"compression": "zlib"}), ("tif-float", grey.astype(np.float32), {})):
        buf = io.BytesIO()
        tifffile.imwrite(buf, arr, **kw)
        out[name] = bytes([SUFFIXES.index(".tif")]) + buf.getvalue()
    out["dcm"] = bytes([SUFFIXES.index(".dcm")]) + _dicom(grey.astype(np.uint16))
    return out


def _dicom(pixels) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.StudyDate = "Fuzz^Seed", "SEED-1", "20200101"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, -10
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def child(corpus: Path, artifacts: Path, seconds: int, workdir: Path) -> None:
    """The libFuzzer process: instrument the readers and fuzz until the time limit or a crash."""
    import atheris

    with atheris.instrument_imports():
        import PIL.Image  # noqa: F401  (plugins are imported on first open, inside the hook)
        import pydicom
        import tifffile  # noqa: F401

        from privaudit.data import metadata, readers
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

    def one_input(data: bytes) -> None:
        if not data:
            return
        path = workdir / f"input{SUFFIXES[data[0] % len(SUFFIXES)]}"
        path.write_bytes(data[1:])
        try:
            image = readers.read_image(path)
        except readers.UnreadableImage:
            pass
        else:
            if image.ndim != 2 or str(image.dtype) != "float32" or not (image.min() >= 0 and image.max() <= 1):
                raise AssertionError(f"not in the working format: {image.dtype} {image.shape}")
        try:
            metadata.read_headers(path)
        except metadata.HeaderError:
            pass

    atheris.Setup(
        [sys.argv[0], str(corpus), f"-max_total_time={seconds}", f"-artifact_prefix={artifacts}/", "-rss_limit_mb=3072", "-timeout=20", "-print_final_stats=1"],
        one_input,
    )
    atheris.Fuzz()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=120, help="fuzzing time (default 120)")
    parser.add_argument("--out", type=Path, help="folder for the corpus and crash artifacts (default: a new temporary folder)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--classify", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.classify is not None:
        classify_main(args.classify)
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="privaudit-fuzz-"))
    corpus, artifacts, workdir = out / "corpus", out / "artifacts", out / "work"
    if args.child:
        child(corpus, artifacts, args.seconds, workdir)
        return
    try:
        import atheris  # noqa: F401
    except ImportError:
        print(json.dumps({"error": "atheris is not installed: pip install atheris"}))
        sys.exit(3)
    for folder in (corpus, artifacts, workdir):
        folder.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (corpus / name).write_bytes(data)
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, __file__, "--child", "--seconds", str(args.seconds), "--out", str(out)],
        capture_output=True, text=True, errors="replace", timeout=args.seconds + 600,
    )
    elapsed = time.monotonic() - start
    log = done.stdout + done.stderr
    (out / "libfuzzer.log").write_text(log)
    stat = {k: int(v) for k, v in re.findall(r"stat::(\w+):\s+(\d+)", log)}
    cov = re.findall(r"cov: (\d+) ft: (\d+)", log)
    crashes = sorted(p for p in artifacts.iterdir() if p.is_file())
    found = []
    for path in crashes:
        found.append({"file": str(path), "kind": path.name.split("-")[0], "exception": _classify(path.read_bytes(), workdir)})
    exceptions = re.findall(r"=== Uncaught Python exception: ===\n(.+)", log)
    figures = {
        "seconds": round(elapsed, 1),
        "executions": stat.get("number_of_executed_units"),
        "executions_per_second": stat.get("average_exec_per_sec"),
        "coverage_edges": int(cov[-1][0]) if cov else None,
        "features": int(cov[-1][1]) if cov else None,
        "corpus_files": len(list(corpus.iterdir())),
        "crashes": len(crashes),
        "crash_details": found,
        "uncaught": exceptions[:5],
        "libfuzzer_exit": done.returncode,
        "log": str(out / "libfuzzer.log"),
    }
    print(f"fuzzed the readers for {figures['seconds']} s: {figures['executions']} inputs, {figures['crashes']} crash(es); log in {figures['log']}")
    print(json.dumps(figures))


def _classify(data: bytes, workdir: Path) -> str:
    """Re-read a crashing input in a fresh process (uninstrumented, 60 s at most) and name what
    escapes: a timeout would hang this process too."""
    path = workdir / f"crash{SUFFIXES[data[0] % len(SUFFIXES)] if data else ''}"
    path.write_bytes(data[1:])
    try:
        done = subprocess.run([sys.executable, __file__, "--classify", str(path)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "still running after 60 s: a hang"
    return done.stdout.strip() or f"the process died (exit {done.returncode}): a native crash or the memory limit"


def classify_main(path: Path) -> None:
    from privaudit.data import metadata, readers

    for fn, ok in ((readers.read_image, readers.UnreadableImage), (metadata.read_headers, metadata.HeaderError)):
        try:
            fn(path)
        except ok:
            continue
        except Exception as exc:  # the finding
            print(f"{fn.__name__}: {type(exc).__name__}: {str(exc)[:200]}")
            return
    print("refused or read cleanly now (fixed, or it depends on the instrumented run)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
