"""--no-images: no image data and no identifiers in results.json or the report."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import write_dicom
from privaudit.cli import main
from privaudit.data import ImageSet
from privaudit.pipeline import audit
from privaudit.redact import pseudonymise
from privaudit.results import load_results, results_schema

#: Identifiers a hospital would never want in a shared file (they look like record numbers,
#: dates and names).
SECRET_PATIENT = "MRN-20240517-SMITH"
SECRET_ID_PREFIX = "2024-05-17_MRN4711"


def assert_no_image_data(text: str) -> None:
    """No raster image in any form: no PNG/JPEG/GIF/WebP data URI, no base64 PNG/JPEG header,
    and every SVG chart free of embedded <image> elements."""
    assert not re.search(r"data:image/(png|jpe?g|gif|webp|bmp|tiff)", text)
    assert "iVBORw0KGgo" not in text and "/9j/" not in text  # base64 of the PNG and JPEG magic
    for payload in re.findall(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", text):
        svg = base64.b64decode(payload).decode("utf-8")
        assert "<image" not in svg and "base64" not in svg


@pytest.fixture(scope="module")
def identifiable(study, tmp_path_factory) -> dict[str, object]:
    """The leaky study with ids and patient ids that look like real identifiers, as files."""
    root = tmp_path_factory.mktemp("identifiable")
    from PIL import Image

    def write(name: str, images: ImageSet, pids: tuple[str, ...] | None) -> Path:
        folder = root / name
        folder.mkdir()
        rows = ["path,patient_id"] if pids else ["path"]
        for i, img in enumerate(images.images):
            fname = f"{SECRET_ID_PREFIX}_{name}_{i:04d}.png"
            Image.fromarray(np.round(img * 255).astype(np.uint8)).save(folder / fname)
            rows.append(f"{name}/{fname},{SECRET_PATIENT}-{pids[i]}" if pids else f"{name}/{fname}")
        (folder / "broken_MRN9999.png").write_bytes(b"not a png")
        rows.append(f"{name}/broken_MRN9999.png" + (f",{SECRET_PATIENT}-x" if pids else ""))
        manifest = root / f"{name}.csv"
        manifest.write_text("\n".join(rows) + "\n")
        return manifest

    files = {
        "train": write("train", study.train, study.train.patient_ids),
        "synthetic": write("synthetic", study.leaky, None),
        "holdout": write("holdout", study.holdout, study.holdout.patient_ids),
    }
    full = audit(files["train"], files["synthetic"], files["holdout"], out=root / "full", config=None)
    shared = root / "shared"
    code = main(["audit", "--train", str(files["train"]), "--synthetic", str(files["synthetic"]), "--holdout", str(files["holdout"]), "--out", str(shared), "--no-images"])
    assert code == 1
    return {"root": root, "files": files, "full": full, "shared": shared}


def secrets_in(text: str, identifiable) -> list[str]:
    full = identifiable["full"]
    found = []
    for needle in (SECRET_PATIENT, SECRET_ID_PREFIX, "MRN9999", "broken_", str(identifiable["root"])):
        if needle in text:
            found.append(needle)
    for p in full.checks["copies"].flagged:
        for value in (p.synthetic_id, p.train_id, p.train_patient_id):
            if value and value in text:
                found.append(value)
    return found


def test_audit_no_images_leaves_no_image_data_and_no_identifiers(identifiable):
    shared = identifiable["shared"]
    report = (shared / "report.html").read_text()
    results = (shared / "results.json").read_text()
    full_report = (identifiable["root"] / "full" / "report.html").read_text()
    # The control: the full report does hold images and identifiers.
    assert "data:image/png" in full_report and secrets_in(full_report, identifiable)
    for text in (report, results):
        assert_no_image_data(text)
        assert secrets_in(text, identifiable) == []
    assert "Shareable version: no images." in report and "This report contains patient images" not in report
    data = load_results(shared / "results.json")  # schema-valid
    assert data["pseudonymised"] is True
    flagged = data["checks"]["copies"]["flagged"]
    assert flagged and all(re.fullmatch(r"img-\d{4}", p["synthetic_id"]) and re.fullmatch(r"patient-\d{3}", p["train_patient_id"]) for p in flagged)
    assert data["inputs"]["train"]["source"] == "train set (path withheld)"
    assert data["inputs"]["train"]["skipped"][0]["path"] == "train-skipped-001"
    # Figures are unchanged: the gate gives the same verdict as on the full results.
    full = json.loads(identifiable["full"].to_json())
    assert data["verdict"] == full["verdict"] and data["checks"]["copies"]["metrics"] == full["checks"]["copies"]["metrics"]


def test_report_no_images_from_full_results_matches_the_audit(identifiable, tmp_path):
    full = identifiable["root"] / "full" / "results.json"
    out = tmp_path / "share.html"
    assert main(["report", str(full), "--no-images", "--out", str(out)]) == 0
    shared_json = json.loads(out.with_suffix(".json").read_text())
    direct = json.loads((identifiable["shared"] / "results.json").read_text())
    for d in (shared_json, direct):
        d.pop("created_at")
        d.pop("run")  # this run's cache statistics: the second audit read the first one's cache
    # Same pseudonyms either way: numbered in order of first appearance in the results.
    assert shared_json == direct
    assert_no_image_data(out.read_text()) and secrets_in(out.read_text(), identifiable) == []


def test_dicom_header_fields_never_appear(tmp_path, study):
    folder = tmp_path / "dicoms"
    for i in range(6):
        write_dicom(folder / f"{i}.dcm", (np.asarray(study.train.images[i]) * 4000).astype(np.uint16), patient_name="Secret^Patient")
    out = tmp_path / "o"
    audit(folder, folder, out=out)
    for name in ("results.json", "report.html"):
        text = (out / name).read_text()
        assert "Secret" not in text and "MRN-0001" not in text  # PatientName, PatientID of write_dicom


def test_pseudonymise_catches_ids_in_free_text_and_is_idempotent():
    data = {
        "inputs": {"train": {"source": "/data/2024/MRN4711/train", "skipped": [{"path": "x/MRN0042.png", "reason": "not an image: x/MRN0042.png"}]}},
        "warnings": ["holdout image scan_MRN123.png duplicates a training image"],
        "checks": {"c": {"flagged": [{"image_id": "scan_MRN123.png", "other_ids": ["ab", "cdef1"], "patient_id": "P77"}]}},
        "verdict": {"policy_source": "/home/dr.smith/policies/strict.toml", "review": {"source": "C:\\\\users\\\\smith\\\\w.toml"}},
        "run": {"cache_dir": "/home/dr.smith/.cache/privaudit", "cluster": {"address": "ray-head.radiology.example-hospital.org", "workers": 8}},
    }
    out = pseudonymise(data)
    assert out["run"] == {"cache_dir": "(withheld)", "cluster": {"address": "(withheld)", "workers": 8}}
    text = json.dumps(out)
    for secret in ("MRN4711", "MRN0042", "MRN123", "cdef1", "P77", "dr.smith", "users"):
        assert secret not in text, secret
    assert out["warnings"] == ["holdout image img-0001 duplicates a training image"]
    assert out["inputs"]["train"]["skipped"][0] == {"path": "train-skipped-001", "reason": "not an image: train-skipped-001"}
    assert out["verdict"]["policy_source"] == "strict.toml"
    assert pseudonymise(out) == out
    assert data["checks"]["c"]["flagged"][0]["image_id"] == "scan_MRN123.png"  # the input is not modified


def test_every_identifier_field_in_the_schema_is_named_for_pseudonymisation():
    """Fields holding image or patient identifiers must end in _id/_ids, or be a known path
    field, so that --no-images catches them: list every string field of the schema."""
    schema = results_schema()
    reviewed = {
        # key: why it is safe or handled
        "source": "inputs: replaced; policy/waivers: basename; null source: an enum",
        "path": "skipped files: replaced",
        "reason": "free text: searched for originals",
        "message": "rule messages: figures only",
        "policy_source": "basename only",
        "item": "a waiver's item: its keys end in _id",
        "warnings": "free text: searched for originals",
        "notes": "free text: searched for originals",
        "cache_dir": "a local path: withheld",
        "address": "run.cluster: the cluster's host: withheld",
    }
    strings = set()

    def walk(node, key=None):
        if isinstance(node, dict):
            t = node.get("type")
            if key and (t == "string" or (isinstance(t, list) and "string" in t)) and "enum" not in node and "const" not in node and "pattern" not in node:
                strings.add(key)
            for k, v in node.get("properties", {}).items():
                walk(v, k)
            for k in ("items", "additionalProperties"):
                if isinstance(node.get(k), dict):
                    walk(node[k], key)
            for v in node.get("$defs", {}).values():
                walk(v)
            for v in node.get("allOf", []) + node.get("oneOf", []):
                walk(v, key)

    walk(schema)
    # Fields that cannot hold an image or patient identifier. A new string field that can must
    # end in _id/_ids (or be handled in privaudit.redact); add one here only with a reason.
    safe = {
        "check", "decision", "description", "fingerprint", "name", "version", "privaudit_version",
        "schema_version", "created_at", "results_created_at", "date", "sha256", "weights_sha256",
        "content_sha256", "policy_sha256", "summary", "why", "reviewer",
        "checks", "embedders", "embedder", "environment",  # names and versions
        "device",  # cpu / cuda
        "family", "likely_transform",  # transform names privaudit writes (privaudit.transforms, explain)
        "field",  # a header field's name from the metadata check's fixed dictionary, never its value
        "cas_classifier", "cas_reason", "classifier", "feature_space", "metric", "uncertainty",  # quality: text privaudit writes
        "classes", "label",  # class labels (e.g. a diagnosis): needed to read CAS, not patient identifiers
        "threat_model", "probe_note",  # fixed sentences privaudit writes (membership, reid)
        "worst_embedder",  # an embedder spec, as "embedder"
        "ray_version",  # run.cluster: Ray's version
        "stage",  # run.searches: the audit stage a search ran in ("check copies"), a name privaudit writes
    }
    unnamed = sorted(k for k in strings if not k.endswith(("_id", "_ids")) and k not in reviewed and k not in safe)
    assert unnamed == [], f"string fields that may hold identifiers: {unnamed}"
