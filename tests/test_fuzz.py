"""Property-based fuzzing of the readers, the working format, array files and the manifest parser.

The property everywhere is the contract of the data stage: any input either becomes valid
working-format images (2D float32, finite, in [0, 1]) or is refused with privaudit's own error
(``UnreadableImage`` for one file, ``InputError`` for an input), never any other exception. File
inputs start from valid files of every format and are mutated (truncated, bytes overwritten,
bytes inserted), so that the decoders get past their magic numbers into the structures behind.

Example counts are kept small for the suite's time budget (a few seconds per property); the
coverage-guided run in ``benchmarks/fuzz_readers.py`` goes further. A crash either finds becomes
a case in ``test_corpus.py``.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from conftest import write_dicom
from privaudit.data import load_imageset
from privaudit.data.convert import ImageFormatError, to_working
from privaudit.data.metadata import HeaderError, read_headers
from privaudit.data.readers import UnreadableImage, read_image
from privaudit.errors import InputError

# PRIVAUDIT_FUZZ_EXAMPLES raises the count for a longer local run (the suite uses 60).
FUZZ = settings(max_examples=int(os.environ.get("PRIVAUDIT_FUZZ_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SCRATCH = Path(tempfile.mkdtemp(prefix="privaudit-fuzz-"))
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)


def _seeds() -> dict[str, bytes]:
    """One small valid file per format and flavour, as bytes."""
    import tifffile

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    out: dict[str, bytes] = {}
    for name, img, fmt, save in (
        ("png", Image.fromarray(grey), "PNG", {}),
        ("png16", Image.fromarray(grey.astype(np.uint16) * 200), "PNG", {}),
        ("pngrgba", Image.fromarray(np.dstack([grey] * 4)), "PNG", {}),
        ("pngpalette", Image.fromarray(grey).convert("P"), "PNG", {"transparency": 0}),
        ("jpg", Image.fromarray(grey), "JPEG", {"quality": 80}),
        ("bmp", Image.fromarray(grey), "BMP", {}),
    ):
        buf = io.BytesIO()
        img.save(buf, format=fmt, **save)
        out[f"{name}.{fmt.lower().replace('jpeg', 'jpg')}"] = buf.getvalue()
    for name, arr, kw in (
        ("u8", grey, {}),
        ("f32", grey.astype(np.float32) / 7.0, {}),
        ("zlib", grey, {"compression": "zlib"}),
        ("rgb", np.dstack([grey] * 3), {"photometric": "rgb"}),
    ):
        buf = io.BytesIO()
        tifffile.imwrite(buf, arr, **kw)
        out[f"{name}.tif"] = buf.getvalue()
    path = write_dicom(SCRATCH / "seed.dcm", grey.astype(np.uint16) * 10, slope=2.0, intercept=-5, attributes={"StudyDate": "20200101"})
    out["seed.dcm"] = path.read_bytes()
    return out


SEEDS = _seeds()


@st.composite
def mutated_files(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "overwrite", "insert", "zero-run"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "truncate":
            del data[pos:]
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos : pos + len(chunk)] = chunk
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            n = draw(st.integers(1, 64))
            data[pos : pos + n] = b"\x00" * min(n, len(data) - pos)
    return name, bytes(data)


def _check_working(image: np.ndarray) -> None:
    assert image.ndim == 2 and image.dtype == np.float32 and min(image.shape) >= 1
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0


@FUZZ
@given(mutated_files())
def test_read_image_returns_working_format_or_refuses(case):
    name, data = case
    path = SCRATCH / f"x-{name}"
    path.write_bytes(data)
    try:
        image = read_image(path)
    except UnreadableImage as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    _check_working(image)


@FUZZ
@given(mutated_files())
def test_read_headers_returns_fields_or_refuses(case):
    name, data = case
    path = SCRATCH / f"h-{name}"
    path.write_bytes(data)
    try:
        headers = read_headers(path)
    except HeaderError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    for field in headers.fields:
        assert field.name and field.category


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([".png", ".jpg", ".tif", ".bmp", ".dcm", ""]))
def test_read_image_on_arbitrary_bytes(data, suffix):
    path = SCRATCH / f"raw{suffix}"
    path.write_bytes(data)
    try:
        _check_working(read_image(path))
    except UnreadableImage:
        pass


ARRAY_DTYPES = st.one_of(
    hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.floating_dtypes(), hnp.boolean_dtypes(), hnp.complex_number_dtypes()
)


@FUZZ
@given(hnp.arrays(ARRAY_DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)))
def test_to_working_on_any_array(array):
    try:
        out = to_working(array)
    except ImageFormatError:
        return
    _check_working(out)
    assert out.shape == (array.shape if array.ndim == 2 else array.shape[:2])


@FUZZ
@given(hnp.arrays(ARRAY_DTYPES, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5)), st.booleans())
def test_array_files_load_or_refuse(array, as_npz):
    path = SCRATCH / ("a.npz" if as_npz else "a.npy")
    if as_npz:
        np.savez(path, images=array)
    else:
        np.save(path, array)
    try:
        images = load_imageset(path, role="synthetic")
    except InputError as exc:
        assert str(exc).startswith("--synthetic: ") and "\n" not in str(exc)
        return
    assert len(images) == array.shape[0] >= 1
    for image in images.images:
        _check_working(image)


# ---------------------------------------------------------------- the manifest parser

FILES = ("a.png", "sub/b.png", "c d.png", "é.png")
MANIFEST_ROOT = SCRATCH / "manifest"
for _name in FILES:
    (MANIFEST_ROOT / _name).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6), 9, np.uint8)).save(MANIFEST_ROOT / _name)

PATHS = st.one_of(
    st.sampled_from([*FILES, "./a.png", "sub/../a.png", "sub//b.png", "missing.png", "../a.png", "/etc/hostname", "C:/x.png", "sub", "", " a.png "]),
    st.text(max_size=12),
)
CELLS = st.one_of(st.sampled_from(["p1", "p2", "", " ", "nan", "0", "1"]), st.text(max_size=6))


@st.composite
def manifests(draw: st.DrawFn) -> bytes:
    columns = draw(st.lists(st.sampled_from(["path", "patient_id", "label", "extra", "Path", ""]), min_size=1, max_size=4))
    rows = draw(st.lists(st.tuples(PATHS, CELLS, CELLS, CELLS), max_size=6))
    import csv

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow(columns)
    for row in rows:
        writer.writerow(list(row)[: len(columns)])
    text = buf.getvalue()
    return text.encode(draw(st.sampled_from(["utf-8", "utf-8-sig"])), "surrogatepass")


def _load_manifest(data: bytes):
    path = MANIFEST_ROOT / "m.csv"
    path.write_bytes(data)
    return load_imageset(path, role="train", max_skipped=1.0)


@FUZZ
@given(manifests())
def test_manifest_parser_structured(data):
    try:
        images = _load_manifest(data)
    except InputError as exc:
        assert str(exc).startswith("--train: ") and "\n" not in str(exc)
        return
    # Every id is a normalised path inside the manifest's folder, and names a real file.
    for image_id, file in zip(images.ids, images.files):
        assert not image_id.startswith(("/", "../")) and ".." not in image_id.split("/")
        assert Path(file).resolve().is_relative_to(MANIFEST_ROOT.resolve()) and Path(file).is_file()
    assert len(set(images.ids)) == len(images.ids)


@FUZZ
@given(st.binary(max_size=400))
def test_manifest_parser_on_arbitrary_bytes(data):
    assume(data.strip())
    try:
        images = _load_manifest(data)
    except InputError:
        return
    assert len(images) >= 1


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed_is_valid(name):
    """The fuzzers start from valid files: otherwise they would only fuzz the error paths."""
    path = SCRATCH / f"seed-{name}"
    path.write_bytes(SEEDS[name])
    _check_working(read_image(path))
