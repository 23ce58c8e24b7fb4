"""Seeded fixtures shared by the tests: a tiny phantom study, its audits, and file writers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from privaudit.phantoms import PhantomStudy, make_study, write_study
from privaudit.pipeline import audit
from privaudit.results import AuditResult

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test's default embedding cache is a fresh folder, never the user's own."""
    import os

    path = tmp_path_factory.mktemp("cache")
    os.environ["PRIVAUDIT_CACHE_DIR"] = str(path)
    return path
SHARED_DATA = REPO.parent / "shared" / "data"

# The tiny profile: a few dozen training patients at 32 px. The holdout is larger on purpose:
# 250 patients x 4 scans = 1,000 null scores put the copies check's detection floor at 2 of the
# 100 synthetic images (FDR 5 %), below the default policy's 2 % tolerance.
TINY = dict(n_train_patients=30, n_holdout_patients=250, scans_per_patient=4, n_synthetic=100, size=32)


@pytest.fixture(scope="session")
def study() -> PhantomStudy:
    return make_study(seed=0, **TINY)


@pytest.fixture(scope="session")
def leaky_result(study: PhantomStudy) -> AuditResult:
    return audit(study.train, study.leaky, study.holdout)


@pytest.fixture(scope="session")
def clean_result(study: PhantomStudy) -> AuditResult:
    return audit(study.train, study.clean, study.holdout)


@pytest.fixture(scope="session")
def study_files(study: PhantomStudy, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny study written as PNG files with manifests (as a user's data would look)."""
    return write_study(study, tmp_path_factory.mktemp("phantoms"))


def png_bytes(array: np.ndarray, mode: str | None = None, **save: object) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG", **save)
    return buf.getvalue()


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(array, mode))
    return path


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    frames: int = 1,
    with_pixels: bool = True,
    transfer_syntax: str | None = None,
    patient_name: str = "Doe^Jane",
    patient_id: str = "MRN-0001",
    attributes: dict[str, object] | None = None,
) -> Path:
    """Write a real DICOM file with pydicom (16-bit unsigned, little endian).

    ``attributes`` sets further elements by keyword (e.g. ``StudyInstanceUID``, ``StudyDate``),
    or private ones by ``(group, element, VR)`` tuple keys.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.Modality = "CR"
    arr = np.asarray(pixels, dtype=np.uint16)
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in (attributes or {}).items():
        if isinstance(key, tuple):
            group, element, vr = key
            ds.add_new((group, element), vr, value)
        else:
            setattr(ds, key, value)
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0
    if with_pixels:
        if transfer_syntax is not None:
            from pydicom.encaps import encapsulate

            ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64])
        else:
            ds.PixelData = arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def realdata(name: str) -> Path:
    """A file in ../shared/data, or skip the test cleanly when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


# The attacks' profile (membership, reid): 60 training patients, so that each side of the
# membership evaluation holds 30 patients (15 per half); still 32 px. Its identity probe is
# fitted once per session (the fit is cached under the training set's hash in the session
# cache), at 64 px (ATTACKS_EMBEDDER_OPTIONS): the 32 px phantoms hold no more detail at 224.
ATTACKS_PROFILE = dict(n_train_patients=60, n_holdout_patients=120, scans_per_patient=4, n_synthetic=60, size=32)
ATTACKS_EMBEDDER_OPTIONS = {"identity": {"size": 64}}


@pytest.fixture(scope="session")
def attack_study() -> PhantomStudy:
    return make_study(seed=0, **ATTACKS_PROFILE)
