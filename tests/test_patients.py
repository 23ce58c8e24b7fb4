"""The per-patient view, and the membership/reid results in results.json and the report."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import ATTACKS_EMBEDDER_OPTIONS
from privaudit.cli import main
from privaudit.config import AuditConfig
from privaudit.data import ImageSet
from privaudit.patients import patient_view
from privaudit.phantoms import transform_copy
from privaudit.pipeline import audit
from privaudit.results import load_results


def test_patient_view_joins_the_checks_by_hand():
    checks = {
        "copies": {"status": "assessed", "flagged": [
            {"synthetic_id": "s1", "train_id": "t1", "train_patient_id": "A"},
            {"synthetic_id": "s2", "train_id": "t1", "train_patient_id": "A"},
            {"synthetic_id": "s3", "train_id": "t9", "train_patient_id": "B"},
        ]},
        "reid": {"status": "assessed", "patients": [
            {"train_patient_id": "A", "n_linked": 7, "evidence": [{"synthetic_id": "s1"}, {"synthetic_id": "s4"}]},
            {"train_patient_id": "C", "n_linked": 1, "evidence": [{"synthetic_id": "s5"}]},
        ]},
        "membership": {"status": "assessed", "unit": "patient", "exposed_patients": [{"train_patient_id": "D", "p_value": 0.01}, {"train_patient_id": "A", "p_value": 0.02}]},
    }
    rows = {r.train_patient_id: r for r in patient_view(checks)}
    assert [r.train_patient_id for r in patient_view(checks)] == ["A", "B", "C", "D"]
    a = rows["A"]
    assert (a.n_copied_scans, a.n_copies, a.n_linked, a.membership_p_value) == (1, 2, 7, 0.02)
    assert a.copy_ids == ("s1", "s2") and a.linked_ids == ("s1", "s4")
    assert (rows["D"].n_copies, rows["D"].n_linked, rows["D"].membership_p_value) == (0, 0, 0.01)
    # A check that was not assessed contributes nothing.
    checks["reid"]["status"] = "not_assessed"
    assert {r.train_patient_id for r in patient_view(checks)} == {"A", "B", "D"}
    assert patient_view({}) == ()


@pytest.fixture(scope="module")
def audited(attack_study, tmp_path_factory):
    """Copies of 10 training patients' scans + 20 new patients, audited by copies, membership and
    reid, with outputs written (full and shareable)."""
    rng = np.random.default_rng(1)
    patients = sorted(set(attack_study.train.patient_ids))[:10]
    images = [transform_copy(im, "noise", rng) for im, p in zip(attack_study.train.images, attack_study.train.patient_ids) if p in patients]
    synthetic = ImageSet.from_arrays(np.stack(images + list(attack_study.clean.images[:20])))
    config = AuditConfig.from_dict({
        "embedders": ["pixels"], "checks": ["copies", "membership", "reid"],
        "membership": {"exposure_share": 0.05}, "embedder_options": ATTACKS_EMBEDDER_OPTIONS,
    })
    root = tmp_path_factory.mktemp("attacks-audit")
    result = audit(attack_study.train, synthetic, attack_study.holdout, config=config, out=root / "full")
    audit(attack_study.train, synthetic, attack_study.holdout, config=config, out=root / "shared", no_images=True)
    return result, set(patients), root


def test_the_view_names_the_copied_and_linked_patients(audited):
    result, copied, _ = audited
    rows = {r.train_patient_id: r for r in result.patients}
    for pid in copied:
        assert rows[pid].n_copied_scans == 4 and rows[pid].n_linked == 4, rows.get(pid)
    assert all(r.n_copies == 0 and r.n_linked == 0 for p, r in rows.items() if p not in copied)


def test_results_validate_and_the_report_shows_both_checks_and_the_view(audited):
    result, copied, root = audited
    data = load_results(root / "full" / "results.json")  # schema-valid
    assert data["schema_version"].startswith("2.") and len(data["patients"]) >= 10
    m, r = data["checks"]["membership"], data["checks"]["reid"]
    assert m["status"] == "assessed" and m["threat_model"].startswith("The attacker holds")
    assert r["status"] == "assessed" and r["power"]["verification_auc"] > 0.95
    html = (root / "full" / "report.html").read_text()
    for needle in ('id="check-membership"', 'id="check-reid"', 'id="patients"', "Population-shift control: held", "Log-log ROC curves of dcr", "not resolvable", "linked by 4 synthetic images"):
        assert needle in html, needle
    # Evidence thumbnails of the linked patients are shown (synthetic and training image side by side).
    assert html.count('alt="training image') >= 10


def test_the_shareable_outputs_pseudonymise_the_new_fields(audited):
    result, copied, root = audited
    text = (root / "shared" / "results.json").read_text() + (root / "shared" / "report.html").read_text()
    for pid in copied:
        assert pid not in text
    data = load_results(root / "shared" / "results.json")
    assert all(re.fullmatch(r"img-\d{4}", i) for p in data["patients"] for i in p["copy_ids"] + p["linked_ids"])
    assert all(re.fullmatch(r"patient-\d{3}", p["train_patient_id"]) for p in data["patients"])
    assert all(re.fullmatch(r"patient-\d{3}", p["train_patient_id"]) for p in data["checks"]["reid"]["patients"])
    assert "data:image/png" not in (root / "shared" / "report.html").read_text()


def test_cli_runs_the_new_checks_and_rerenders_them(attack_study, study_files, tmp_path):
    """Through main(argv): --checks carries them; privaudit report redraws the sections."""
    config = tmp_path / "c.toml"
    config.write_text('[membership]\nmin_units = 10\n[embedder_options.identity]\nsize = 64\n')
    out = tmp_path / "o"
    code = main(["audit", "--train", str(study_files["train"]), "--synthetic", str(study_files["leaky"]), "--holdout", str(study_files["holdout"]),
                 "--checks", "copies,membership,reid", "--embedder", "pixels", "--config", str(config), "--out", str(out)])
    assert code == 1  # the leaky set fails
    data = json.loads((out / "results.json").read_text())
    assert set(data["checks"]) == {"copies", "membership", "reid"} and data["config"]["check_options"]["membership"]["min_units"] == 10
    assert main(["report", str(out / "results.json"), "--out", str(tmp_path / "again.html")]) == 0
    again = (tmp_path / "again.html").read_text()
    assert 'id="check-membership"' in again and 'id="check-reid"' in again
