"""Readers, the working format, and load_imageset on folders, arrays and manifests."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import png_bytes, write_dicom, write_png
from privaudit.data import ImageSet, load_imageset
from privaudit.data.convert import ImageFormatError, to_working
from privaudit.data.readers import UnreadableImage, read_image
from privaudit.errors import InputError, MissingDependencyError

RAMP8 = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))  # 16 x 64


# ---------------------------------------------------------------- the working format


def test_uint8_is_divided_by_255():
    out = to_working(np.array([[0, 51, 255]], np.uint8))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.2, 1.0]], atol=1e-7)


def test_16_bit_and_large_floats_are_scaled_by_their_own_range():
    out = to_working(np.array([[1000, 2000, 3000]], np.uint16))
    np.testing.assert_allclose(out, [[0.0, 0.5, 1.0]])
    out = to_working(np.array([[-1000.0, 0.0, 1000.0]]))  # e.g. Hounsfield units
    np.testing.assert_allclose(out, [[0.0, 0.5, 1.0]])


def test_floats_in_unit_range_are_kept_and_constant_images_become_zero():
    x = np.array([[0.25, 0.5]], np.float64)
    np.testing.assert_allclose(to_working(x), x)
    np.testing.assert_array_equal(to_working(np.full((3, 3), 700, np.uint16)), 0)


def test_rgb_becomes_bt601_luminance_and_alpha_is_dropped():
    rgb = np.zeros((2, 2, 4), np.uint8)
    rgb[..., 0], rgb[..., 3] = 255, 7  # pure red, arbitrary alpha
    np.testing.assert_allclose(to_working(rgb), round(0.299 * 255) / 255, atol=1e-6)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 8, 8)), "3D volume"),
        (np.zeros(8), "3D volume"),
        (np.array([[np.nan, 1.0]]), "NaN or infinite"),
        (np.array([["a"]]), "unsupported pixel type"),
    ],
    ids=["volume", "1d", "nan", "text"],
)
def test_bad_arrays_are_refused(array, message):
    with pytest.raises(ImageFormatError, match=message):
        to_working(array)


# ---------------------------------------------------------------- single files


def test_png_8_and_16_bit(tmp_path):
    p8 = write_png(tmp_path / "a.png", RAMP8)
    np.testing.assert_allclose(read_image(p8), RAMP8 / 255.0, atol=1e-6)
    ramp16 = (RAMP8.astype(np.uint16) * 16 + 100).astype(np.uint16)
    p16 = tmp_path / "b.png"
    Image.fromarray(ramp16).save(p16)
    assert Image.open(p16).mode.startswith("I;16")
    out = read_image(p16)
    assert out.min() == 0.0 and out.max() == 1.0  # scaled by its own range
    np.testing.assert_allclose(out, (ramp16 - 100) / (ramp16.max() - 100.0), atol=1e-6)


def test_palette_and_rgba_pngs_become_grey(tmp_path):
    rgb = np.stack([RAMP8, RAMP8, RAMP8], axis=-1)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    pal.save(tmp_path / "p.png")
    np.testing.assert_allclose(read_image(tmp_path / "p.png"), RAMP8 / 255.0, atol=2 / 255)
    rgba = np.dstack([rgb, np.full(RAMP8.shape, 128, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_allclose(read_image(tmp_path / "a.png"), RAMP8 / 255.0, atol=1 / 255)


def test_jpeg_bmp_and_tiff(tmp_path):
    Image.fromarray(RAMP8).save(tmp_path / "a.jpg", quality=95)
    np.testing.assert_allclose(read_image(tmp_path / "a.jpg"), RAMP8 / 255.0, atol=0.03)
    Image.fromarray(RAMP8).save(tmp_path / "a.bmp")
    np.testing.assert_allclose(read_image(tmp_path / "a.bmp"), RAMP8 / 255.0, atol=1e-6)
    import tifffile

    tifffile.imwrite(tmp_path / "a8.tif", RAMP8)
    np.testing.assert_allclose(read_image(tmp_path / "a8.tif"), RAMP8 / 255.0, atol=1e-6)
    tifffile.imwrite(tmp_path / "a16.tiff", RAMP8.astype(np.uint16) * 200)
    assert read_image(tmp_path / "a16.tiff").max() == 1.0
    tifffile.imwrite(tmp_path / "f.tif", (RAMP8 / 255.0).astype(np.float32))
    np.testing.assert_allclose(read_image(tmp_path / "f.tif"), RAMP8 / 255.0, atol=1e-6)
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 8, 8), np.uint8))
    with pytest.raises(UnreadableImage, match="2D images only"):
        read_image(tmp_path / "stack.tif")


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("empty.png", b"", "empty file"),
        ("text.png", b"this is not an image\n", "not a recognised image"),
        ("truncated.png", png_bytes(RAMP8)[:60], "corrupt or truncated"),
        ("truncated.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 40, "corrupt|not a recognised"),
        ("truncated.tif", b"II*\x00" + b"\x00" * 10, "TIFF"),
        ("truncated.bmp", b"BM" + b"\x00" * 30, "corrupt|not a recognised"),
    ],
    ids=["zero-bytes", "text-as-png", "truncated-png", "truncated-jpeg", "truncated-tiff", "truncated-bmp"],
)
def test_corrupt_files_raise_unreadable(tmp_path, name, data, reason):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(UnreadableImage, match=reason):
        read_image(path)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = write_png(tmp_path / "bomb.png", np.zeros((64, 64), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 px is then above Pillow's limit
    with pytest.raises(UnreadableImage, match="decompression bomb"):
        read_image(path)


# ---------------------------------------------------------------- DICOM


def test_dicom_rescale_and_monochrome1(tmp_path):
    raw = np.array([[0, 100], [200, 400]], np.uint16)
    mono2 = read_image(write_dicom(tmp_path / "a.dcm", raw, slope=2.0, intercept=-1024))
    np.testing.assert_allclose(mono2, raw / 400.0, atol=1e-6)
    mono1 = read_image(write_dicom(tmp_path / "b.dcm", raw, photometric="MONOCHROME1"))
    np.testing.assert_allclose(mono1, 1.0 - raw / 400.0, atol=1e-6)


def test_dicom_detected_by_preamble_without_extension(tmp_path):
    path = write_dicom(tmp_path / "IMG0001", np.eye(4, dtype=np.uint16) * 9)
    np.testing.assert_allclose(read_image(path), np.eye(4), atol=1e-6)
    s = load_imageset(tmp_path)
    assert s.ids == ("IMG0001",)


def test_negative_rescale_slope_flips_the_display(tmp_path):
    raw = np.array([[0, 100]], np.uint16)
    out = read_image(write_dicom(tmp_path / "a.dcm", raw, slope=-1.0, intercept=0))
    np.testing.assert_allclose(out, [[1.0, 0.0]])


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        (dict(with_pixels=False), "without pixel data"),
        (dict(frames=3), "multi-frame"),
        (dict(transfer_syntax="1.2.840.10008.1.2.4.90"), "cannot be decoded"),
    ],
    ids=["no-pixels", "multi-frame", "jpeg2000-no-decoder"],
)
def test_dicom_that_cannot_be_used(tmp_path, kwargs, reason):
    pixels = np.zeros((3, 4, 4) if kwargs.get("frames") else (4, 4), np.uint16)
    path = write_dicom(tmp_path / "x.dcm", pixels, **kwargs)
    with pytest.raises(UnreadableImage, match=reason):
        read_image(path)


def test_dicom_without_pydicom_names_the_extra(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "a.dcm", np.eye(4, dtype=np.uint16))
    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if the extra were not installed
    with pytest.raises(MissingDependencyError, match=r"privaudit\[dicom\]") as info:
        load_imageset(tmp_path)
    assert info.value.exit_code == 3


def test_dicom_header_values_never_reach_the_image_set(tmp_path):
    write_dicom(tmp_path / "a.dcm", np.eye(4, dtype=np.uint16), patient_name="Secret^Name")
    s = load_imageset(tmp_path)
    assert "Secret" not in repr(s.summary("train")) and "MRN" not in repr(s.summary("train"))


# ---------------------------------------------------------------- folders


def test_folder_recursive_ids_ignored_and_skipped(tmp_path):
    write_png(tmp_path / "b" / "2.png", RAMP8)
    write_png(tmp_path / "a.png", RAMP8)
    for i in range(30):
        write_png(tmp_path / "many" / f"{i:02d}.png", RAMP8)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")
    (tmp_path / "broken.png").write_bytes(b"garbage")
    s = load_imageset(tmp_path, role="train", max_skipped=0.05)
    assert s.ids[:2] == ("a.png", "b/2.png")
    assert len(s) == 32 and s.kind == "folder"
    assert [(f.path, "not a recognised image" in f.reason) for f in s.skipped] == [("broken.png", True)]
    assert s.n_ignored == 2
    assert s.summary("train").n_skipped == 1


def test_folder_with_too_many_bad_files_is_refused(tmp_path):
    write_png(tmp_path / "a.png", RAMP8)
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"--train: 1 of 2 files \(50%\) could not be read, more than --max-skipped 5%; first: b.png: empty file"):
        load_imageset(tmp_path, role="train")
    assert len(load_imageset(tmp_path, role="train", max_skipped=0.5)) == 1


def test_empty_and_all_bad_folders(tmp_path):
    with pytest.raises(InputError, match="no images found"):
        load_imageset(tmp_path, role="synthetic")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(InputError, match="no readable images.*empty file"):
        load_imageset(tmp_path, role="synthetic")


def test_mixed_sizes_are_kept(tmp_path):
    write_png(tmp_path / "a.png", RAMP8)
    write_png(tmp_path / "b.png", np.zeros((40, 30), np.uint8))
    s = load_imageset(tmp_path)
    assert [im.shape for im in s.images] == [(16, 64), (40, 30)]
    assert s.summary("train").image_size_min == (16, 30)


def test_missing_and_unsupported_paths(tmp_path):
    with pytest.raises(InputError, match="--holdout: no such file or folder"):
        load_imageset(tmp_path / "nope", role="holdout")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(InputError, match="unsupported input"):
        load_imageset(tmp_path / "x.json")


# ---------------------------------------------------------------- arrays


def test_npy_and_npz_with_metadata(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "a.npy", images)
    s = load_imageset(tmp_path / "a.npy")
    assert s.ids == ("0", "1", "2", "3", "4") and s.kind == "array" and s.patient_ids is None
    np.testing.assert_allclose(s.images[3], images[3] / 255.0, atol=1e-7)
    np.savez(tmp_path / "b.npz", images=images[..., None].repeat(3, -1), patient_id=np.array([1, 1, 2, 2, 3]), label=np.array([[0], [1], [0], [1], [0]]))
    s = load_imageset(tmp_path / "b.npz")
    assert s.patient_ids == ("1", "1", "2", "2", "3") and s.labels == ("0", "1", "0", "1", "0")
    assert s.n_patients == 3


@pytest.mark.parametrize(
    "payload, message",
    [
        (dict(images=np.array([{"a": 1}], dtype=object)), "holds Python objects"),
        (dict(imgs=np.zeros((2, 4, 4))), "no 'images' array \\(is 'imgs' meant to be 'images'\\?\\)"),
        (dict(images=np.full((2, 4, 4), np.nan)), "2 image\\(s\\) contain NaN"),
        (dict(images=np.zeros((4, 4))), "expected \\(N, H, W\\)"),
        (dict(images=np.zeros((2, 5, 6, 6))), "3D volumes"),
        (dict(images=np.zeros((2, 4, 4)), patient_id=np.array(["a"])), "'patient_id' has 1 entries for 2 images"),
        (dict(images=np.zeros((2, 4, 4)), patient_id=np.array(["a", ""])), "patient_id of image 1 is empty"),
    ],
    ids=["pickle", "no-images-key", "nan", "rank-2", "volumes", "short-ids", "empty-id"],
)
def test_bad_array_files(tmp_path, payload, message):
    path = tmp_path / "x.npz"
    np.savez(path, **payload)
    with pytest.raises(InputError, match=message):
        load_imageset(path, role="train")


def test_npy_holding_objects_is_never_unpickled(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="never unpickles"):
        load_imageset(path)


# ---------------------------------------------------------------- manifests


def _manifest(tmp_path: Path, text: str, files: tuple[str, ...] = ("a.png", "b.png")) -> Path:
    for name in files:
        write_png(tmp_path / name, RAMP8)
    path = tmp_path / "m.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_manifest_with_patients_and_labels(tmp_path):
    path = _manifest(tmp_path, "path,patient_id,label,extra\na.png,p1,0,x\n./sub/../b.png,p2,1,y\n")
    s = load_imageset(path)
    assert s.ids == ("a.png", "b.png") and s.patient_ids == ("p1", "p2") and s.labels == ("0", "1")
    assert s.kind == "manifest"


def test_manifest_missing_file_is_skipped_and_listed(tmp_path):
    rows = "".join(f"f{i}.png,p{i}\n" for i in range(25))
    path = _manifest(tmp_path, "path,patient_id\n" + rows + "gone.png,px\n", files=tuple(f"f{i}.png" for i in range(25)))
    s = load_imageset(path)
    assert len(s) == 25 and [(f.path, f.reason) for f in s.skipped] == [("gone.png", "file listed in the manifest does not exist")]


@pytest.mark.parametrize(
    "text, message",
    [
        ("file,patient_id\na.png,p1\n", "no 'path' column"),
        ("Path\na.png\n", "is 'Path' meant to be 'path'"),
        ("path\n../outside.png\n", "escapes the manifest's folder"),
        ("path\n/etc/passwd\n", "escapes the manifest's folder"),
        ("path\na.png\n./a.png\n", "listed twice"),
        ("path,patient_id\na.png,\n", "line 2: empty patient_id"),
        ("path,label\na.png,1\nb.png,\n", "line 3: empty label"),
        ("path\n", "lists no images"),
    ],
    ids=["no-path-column", "case-typo", "dotdot", "absolute", "duplicate", "empty-patient", "empty-label", "no-rows"],
)
def test_bad_manifests(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        load_imageset(_manifest(tmp_path, text))


def test_manifest_non_utf8_is_refused(tmp_path):
    path = _manifest(tmp_path, "")
    path.write_bytes(b"path,patient_id\na.png,J\xf6rg\n")
    with pytest.raises(InputError, match="not valid UTF-8"):
        load_imageset(path)


# ---------------------------------------------------------------- ImageSet


def test_imageset_hash_ignores_listing_order_but_not_content():
    rng = np.random.default_rng(1)
    images = rng.random((4, 6, 6)).astype(np.float32)
    a = ImageSet.from_arrays(images, ids=["w", "x", "y", "z"])
    b = ImageSet.from_arrays(images[::-1], ids=["z", "y", "x", "w"])
    assert a.content_sha256 == b.content_sha256
    changed = images.copy()
    changed[2, 0, 0] += 0.01
    assert ImageSet.from_arrays(changed, ids=["w", "x", "y", "z"]).content_sha256 != a.content_sha256


def test_imageset_images_are_read_only_and_ids_unique():
    s = ImageSet.from_arrays(np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(ValueError):
        s.images[0][0, 0] = 1.0
    with pytest.raises(InputError, match="occurs more than once"):
        ImageSet.from_arrays(np.zeros((2, 3, 3), np.uint8), ids=["a", "a"])
