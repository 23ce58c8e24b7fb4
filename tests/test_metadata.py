"""The metadata check: header fields of the synthetic files, and identifiers repeated from training.

Ground truth is planted in files the tests write: DICOM headers copied from training scans, PNG
text chunks, EXIF and TIFF tags. Values never appear in any result; only field names and counts.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, PngImagePlugin

from conftest import write_dicom, write_png
from privaudit.checks.base import CheckStatus
from privaudit.cli import main
from privaudit.config import AuditConfig
from privaudit.data import ImageSet, load_imageset
from privaudit.data.metadata import HeaderError, read_headers
from privaudit.pipeline import audit
from privaudit.policy import Policy

RNG = np.random.default_rng(5)
META_ONLY = AuditConfig(checks=("metadata",))


def pixels() -> np.ndarray:
    return RNG.integers(0, 4000, (16, 16)).astype(np.uint16)


def names(headers) -> dict[str, str]:
    return {f.name: f.category for f in headers.fields}


# ---------------------------------------------------------------- reading headers


def test_dicom_fields_by_category(tmp_path):
    path = write_dicom(
        tmp_path / "a.dcm",
        pixels(),
        patient_name="Quixote^Alonso",
        patient_id="LM-1605",
        attributes={
            "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1234",
            "StudyDate": "16050116",
            "PatientBirthDate": "15470929",
            "InstitutionName": "Hospital de la Mancha",
            "AccessionNumber": "ACC-77",
            "PatientSex": "M",
            "Manufacturer": "Cervantes Imaging",  # technical: not listed
            "ImageComments": "rode at windmills",
            (0x0009, 0x0010, "LO"): "ACME 1.0",
            (0x0009, 0x1001, "LO"): "private note",
        },
    )
    h = read_headers(path)
    assert h.format == "dicom"
    assert names(h) == {
        "DICOM AccessionNumber": "id",
        "DICOM ImageComments": "free_text",
        "DICOM InstitutionName": "free_text",
        "DICOM PatientBirthDate": "date",
        "DICOM PatientID": "id",
        "DICOM PatientName": "name",
        "DICOM PatientSex": "demographic",
        "DICOM SOPInstanceUID": "uid",
        "DICOM StudyDate": "date",
        "DICOM StudyInstanceUID": "uid",
        "DICOM private tags": "free_text",
    }
    # SOPClassUID (a standard UID) and the file meta group are technical and not listed; dates
    # and demographics are listed but never compared, so they carry no digests.
    by_name = {f.name: f for f in h.fields}
    assert by_name["DICOM StudyDate"].digests == () and by_name["DICOM PatientSex"].digests == ()
    assert len(by_name["DICOM PatientName"].digests) == 1


def test_equal_values_give_equal_digests_and_placeholders_are_absent(tmp_path):
    a = read_headers(write_dicom(tmp_path / "a.dcm", pixels(), patient_name="DOE^JOHN^^", patient_id="X-1"))
    b = read_headers(write_dicom(tmp_path / "b.dcm", pixels(), patient_name="Doe^John", patient_id="x-1"))
    da, db = ({f.name: f.digests for f in h.fields} for h in (a, b))
    assert da["DICOM PatientName"] == db["DICOM PatientName"]  # case and trailing separators
    assert da["DICOM PatientID"] == db["DICOM PatientID"]
    assert da["DICOM SOPInstanceUID"] != db["DICOM SOPInstanceUID"]
    anon = read_headers(write_dicom(tmp_path / "c.dcm", pixels(), patient_name="ANONYMOUS", patient_id=""))
    assert set(names(anon)) == {"DICOM SOPInstanceUID"}
    assert anon.patient_key is None
    custom = read_headers(tmp_path / "c.dcm", placeholders=())
    assert "DICOM PatientName" in names(custom)


def _png_with_text(path: Path, **chunks: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key.replace("_", " "), value)
    exif = Image.Exif()
    exif[ExifTags.Base.Artist] = "Someone"
    Image.fromarray(RNG.integers(0, 256, (8, 8), dtype=np.uint8)).save(path, pnginfo=info, exif=exif)
    return path


def test_png_text_chunks_and_exif(tmp_path):
    h = read_headers(_png_with_text(tmp_path / "a.png", Comment="c", Creation_Time="2020", Software="gen 1.0", patient_code="P-77"))
    assert h.format == "png"
    assert names(h) == {
        "PNG text Comment": "free_text",
        "PNG text Creation Time": "date",
        "PNG text (custom keyword)": "free_text",  # its keyword is not a fixed name: not shown
        "EXIF Artist": "name",
    }
    plain = write_png(tmp_path / "b.png", np.zeros((8, 8), np.uint8))
    assert read_headers(plain).fields == ()


def test_png_text_after_the_image_data_is_found(tmp_path):
    """Pillow reads chunks after IDAT only while decoding; the header reader walks the chunk
    list to know when that is needed (and skips the decode otherwise)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    plain = tmp_path / "a.png"
    Image.new("L", (8, 8)).save(plain)
    data = plain.read_bytes()
    late = data[:-12] + chunk(b"tEXt", b"Author\x00Late Name") + chunk(b"eXIf", _exif_with_artist()) + data[-12:]
    (tmp_path / "late.png").write_bytes(late)
    assert names(read_headers(tmp_path / "late.png")) == {"PNG text Author": "name", "EXIF Artist": "name"}


def _exif_with_artist() -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Artist] = "Late Artist"
    return exif.tobytes()


def test_jpeg_comment_exif_and_gps(tmp_path):
    exif = Image.Exif()
    exif[ExifTags.Base.DateTimeOriginal] = "2021:02:03 04:05:06"
    exif[ExifTags.Base.Make] = "Camera Co"  # technical
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitude] = (48.0, 51.0, 24.0)
    path = tmp_path / "a.jpg"
    Image.new("L", (8, 8)).save(path, exif=exif, comment=b"scan of patient 12")
    assert names(read_headers(path)) == {"JPEG comment": "free_text", "EXIF DateTimeOriginal": "date", "EXIF GPSLatitude": "location"}


def test_tiff_tags_and_tifffiles_own_description(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((8, 8), np.uint8))
    assert read_headers(tmp_path / "plain.tif").fields == ()  # shape JSON and Software only
    tifffile.imwrite(
        tmp_path / "a.tif", np.zeros((8, 8), np.uint8), description="Patient Q, left lung", metadata=None,
        extratags=[(315, "s", 0, "Dr Who", True), (65000, "s", 0, "vendor text", True)],
    )
    assert names(read_headers(tmp_path / "a.tif")) == {"TIFF Artist": "name", "TIFF ImageDescription": "free_text", "TIFF tag 65000": "free_text"}


def test_unreadable_headers_raise_header_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(HeaderError, match=r"^headers cannot be read \(UnidentifiedImageError\)$"):
        read_headers(tmp_path / "x.png")
    with pytest.raises(HeaderError, match="cannot open"):
        read_headers(tmp_path / "missing.png")


# ---------------------------------------------------------------- the check, planted truth


def _study(tmp_path: Path) -> dict[str, Path]:
    """6 training patients x 2 scans; synthetic: 2 files with a training patient's header
    (PatientID, name, study UID), 1 with only the shared institution name, 3 fresh."""
    for p in range(6):
        study_uid = f"1.2.826.0.1.3680043.8.498.{7000 + p}"
        for k in range(2):
            write_dicom(
                tmp_path / "train" / f"p{p}_{k}.dcm", pixels(), patient_name=f"Patient^Number{p}", patient_id=f"MRN-{p:04d}",
                attributes={"StudyInstanceUID": study_uid, "InstitutionName": "St Example Hospital", "StudyDate": "20200101"},
            )
    for i, p in enumerate((1, 4)):  # a header copied from a training scan
        write_dicom(
            tmp_path / "synthetic" / f"leak{i}.dcm", pixels(), patient_name=f"Patient^Number{p}", patient_id=f"MRN-{p:04d}",
            attributes={"StudyInstanceUID": f"1.2.826.0.1.3680043.8.498.{7000 + p}"},
        )
    write_dicom(tmp_path / "synthetic" / "shared.dcm", pixels(), patient_name="ANONYMOUS", patient_id="SYN-9", attributes={"InstitutionName": "St Example Hospital"})
    for i in range(3):
        write_dicom(tmp_path / "synthetic" / f"fresh{i}.dcm", pixels(), patient_name="ANONYMOUS", patient_id="")
    return {"train": tmp_path / "train", "synthetic": tmp_path / "synthetic"}


def test_planted_header_leaks_are_found_by_field_and_count(tmp_path):
    paths = _study(tmp_path)
    result = audit(paths["train"], paths["synthetic"], config=META_ONLY)
    m = result.checks["metadata"]
    assert m.status is CheckStatus.ASSESSED and m.n_read == 6 and m.formats == {"dicom": 6}
    assert m.n_training_files_read == 12
    assert m.n_matching_training == 2 and m.n_shared_value_only == 1
    assert m.metrics["identifier_match_rate"].value == pytest.approx(2 / 6)
    counts = {f.field: (f.n_files, f.n_matching_training) for f in m.fields}
    assert counts["DICOM PatientID"] == (3, 2)  # "SYN-9" is present but new
    assert counts["DICOM PatientName"] == (2, 2)  # the placeholders are absent
    assert counts["DICOM StudyInstanceUID"] == (2, 2)
    assert counts["DICOM InstitutionName"] == (1, 0)  # shared by all 6 training patients
    assert counts["DICOM SOPInstanceUID"] == (6, 0)  # fresh UIDs in every file
    # Identifying fields: the 2 leaks and "shared" (PatientID, InstitutionName); the 3 fresh
    # files hold only UIDs (required, fresh), so they do not count.
    assert m.n_identifying == 3
    reasons = {r.metric: r.status.value for r in result.verdict.reasons}
    assert reasons["metadata.identifier_match_rate"] == "fail" and reasons["metadata.identifying_field_rate"] == "warn"
    assert "2 of the 6 synthetic files repeat a header value of a training file: DICOM PatientID (2), DICOM PatientName (2), DICOM StudyInstanceUID (2)." in m.summary


def test_unreadable_synthetic_headers_are_never_cleared(tmp_path):
    """A synthetic file whose header cannot be read (it changed after decoding, or is malformed)
    is counted in n but not cleared: a rate with no finding is not assessed; a rate with
    findings keeps them, its interval widened by the unreadable files."""
    paths = _study(tmp_path)
    synthetic = load_imageset(paths["synthetic"])
    next(Path(f) for f in synthetic.files if "fresh0" in f).unlink()  # gone after decoding
    m = audit(paths["train"], synthetic, config=META_ONLY).checks["metadata"]
    assert m.status is CheckStatus.ASSESSED and (m.n_read, m.n_unreadable) == (5, 1)
    match = m.metrics["identifier_match_rate"]
    assert match.n == 6 and match.value == pytest.approx(2 / 6)
    from privaudit.stats import clopper_pearson
    assert (match.ci_low, match.ci_high) == pytest.approx((clopper_pearson(2, 6)[0], clopper_pearson(3, 6)[1]))
    # Only fresh files: nothing found in the 3 readable headers, 1 unreadable: not assessed.
    clean = tmp_path / "clean"
    for i in range(4):
        write_dicom(clean / f"c{i}.dcm", pixels(), patient_name="", patient_id="")
    clean_set = load_imageset(clean)
    Path(clean_set.files[0]).unlink()
    result = audit(paths["train"], clean_set, config=META_ONLY)
    m = result.checks["metadata"]
    assert m.metrics["identifier_match_rate"].value is None and m.metrics["identifying_field_rate"].value is None
    assert any("unreadable one(s) could hold identifiers" in w for w in m.warnings)
    reasons = {r.metric: r.status.value for r in result.verdict.reasons}
    assert reasons["metadata.identifier_match_rate"] == "not_assessed"


def test_patient_ids_from_a_manifest_decide_what_is_shared(tmp_path):
    """With manifest patient ids, a value held by one patient's two scans is not 'shared'."""
    paths = _study(tmp_path)
    rows = "".join(f"train/p{p}_{k}.dcm,P{p}\n" for p in range(6) for k in range(2))
    (tmp_path / "train.csv").write_text("path,patient_id\n" + rows)
    result = audit(tmp_path / "train.csv", paths["synthetic"], config=META_ONLY)
    assert result.checks["metadata"].n_matching_training == 2


def test_fresh_headers_pass_and_identical_headers_fail(tmp_path):
    paths = _study(tmp_path)
    clean = tmp_path / "clean"
    for i in range(4):
        write_dicom(clean / f"c{i}.dcm", pixels(), patient_name="", patient_id="")
    result = audit(paths["train"], clean, config=META_ONLY)
    m = result.checks["metadata"]
    assert (m.n_matching_training, m.n_identifying) == (0, 0)
    assert {r.metric: r.status.value for r in result.verdict.reasons}["metadata.identifier_match_rate"] == "pass"
    assert m.summary == "None of the 4 synthetic files carries an identifying header field, and none repeats a training file's header value."
    same = audit(paths["train"], paths["train"], config=META_ONLY).checks["metadata"]
    assert same.metrics["identifier_match_rate"].value == 1.0  # every file is a training file


def test_png_text_repeating_a_training_chunk_is_a_match(tmp_path):
    for i in range(3):
        _png_with_text(tmp_path / "train" / f"t{i}.png", Comment=f"patient P-{i} chest PA")
    _png_with_text(tmp_path / "syn" / "s0.png", Comment="patient P-2 chest PA")
    _png_with_text(tmp_path / "syn" / "s1.png", Comment="generated")
    m = audit(tmp_path / "train", tmp_path / "syn", config=META_ONLY).checks["metadata"]
    counts = {f.field: (f.n_files, f.n_matching_training) for f in m.fields}
    assert counts["PNG text Comment"] == (2, 1)
    # "Someone" as EXIF Artist is in every training file, but without patient ids or DICOM
    # PatientIDs nothing says it is shared: it counts (the conservative side).
    assert counts["EXIF Artist"] == (2, 2)


def test_arrays_are_not_assessed_and_only_warn(study):
    result = audit(study.train, study.clean, study.holdout)
    m = result.checks["metadata"]
    assert m.status is CheckStatus.NOT_ASSESSED
    assert m.reason == (
        "the synthetic images were given as arrays in memory, not as files, so there are no headers "
        "to read; audit the files that will be released to check their metadata"
    )
    outcomes = {r.metric: (r.status.value, r.counts_as.value) for r in result.verdict.reasons}
    assert outcomes["metadata.identifier_match_rate"] == ("not_assessed", "warn")
    assert outcomes["copies.copy_rate"] == ("pass", "pass")
    assert result.verdict.status.value == "warn"


def test_array_files_through_the_cli_warn_and_exit_0(study, tmp_path, capsys):
    for name, images in (("train", study.train), ("clean", study.clean), ("holdout", study.holdout)):
        np.save(tmp_path / f"{name}.npy", np.stack(images.images))
    code = main(["audit", "--train", str(tmp_path / "train.npy"), "--synthetic", str(tmp_path / "clean.npy"), "--holdout", str(tmp_path / "holdout.npy"), "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert code == 0 and "verdict: WARN" in out
    assert "metadata.identifier_match_rate: not assessed (check not assessed: the synthetic images were given as an array file" in out


def test_training_as_arrays_leaves_only_the_match_rate_unassessed(tmp_path):
    paths = _study(tmp_path)
    train = load_imageset(paths["train"])
    as_arrays = ImageSet(images=train.images, ids=train.ids)  # same pixels, no files
    m = audit(as_arrays, paths["synthetic"], config=META_ONLY).checks["metadata"]
    assert m.status is CheckStatus.ASSESSED
    assert m.metrics["identifier_match_rate"].value is None and m.metrics["identifying_field_rate"].value == pytest.approx(3 / 6)
    assert any("could not be compared with training headers" in w for w in m.warnings)


def test_results_and_report_hold_field_names_and_counts_never_values(tmp_path):
    paths = _study(tmp_path)
    out = tmp_path / "out"
    audit(paths["train"], paths["synthetic"], config=META_ONLY, out=out)
    text = (out / "results.json").read_text() + (out / "report.html").read_text()
    # Whole values, never digits inside a timing or memory figure (a stage's seconds once
    # read 0.0200929470011 and held "7001"): no digit or dot before, no digit after.
    uid = "1.2.826.0.1.3680043.8.498.700"
    for value in ("Number1", "MRN-0001", "MRN-0004", "St Example", f"{uid}1", f"{uid}4", "20200101"):
        assert not re.search(rf"(?<![\d.]){re.escape(value)}(?!\d)", text), value
    data = json.loads((out / "results.json").read_text())
    assert data["checks"]["metadata"]["fields"][0] == {"field": "DICOM PatientID", "category": "id", "n_files": 3, "n_matching_training": 2}
    html = (out / "report.html").read_text()
    assert "Header fields in the synthetic files" in html and "<code>DICOM StudyInstanceUID</code>" in html


def test_default_policy_rules_on_metadata():
    rules = {r.metric: r for r in Policy.default().rules}
    assert rules["metadata.identifier_match_rate"].fail == 0.0
    assert rules["metadata.identifying_field_rate"].warn == 0.0
