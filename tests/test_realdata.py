"""Tests on the real images in ../shared/data (skipped cleanly when the folder is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import realdata
from privaudit.data import ImageSet, load_imageset
from privaudit.pipeline import audit

pytestmark = pytest.mark.realdata


def _covid_split() -> tuple[ImageSet, ImageSet, ImageSet]:
    """Patient 97 in training, 60 other patients as holdout, patient 178 (the same person) as
    the 'synthetic' set, without patient ids."""
    path = realdata("covid_chestxray/covid_cxr_licensed_256.npz")
    covid = load_imageset(path, role="train")
    pids = np.array(covid.patient_ids)
    patients = sorted(set(pids) - {"178"}, key=lambda p: (len(p), p))
    rng = np.random.default_rng(0)
    holdout_patients = set(rng.choice([p for p in patients if p != "97"], size=60, replace=False))
    train_idx = [i for i, p in enumerate(pids) if p != "178" and p not in holdout_patients]
    holdout_idx = [i for i, p in enumerate(pids) if p in holdout_patients]
    synthetic_idx = [i for i, p in enumerate(pids) if p == "178"]
    train, holdout = covid.subset(train_idx, source="covid:train"), covid.subset(holdout_idx, source="covid:holdout")
    synthetic = covid.subset(synthetic_idx, source="covid:patient178")
    synthetic = ImageSet(images=synthetic.images, ids=synthetic.ids, source=synthetic.source)  # no patient ids on synthetic data
    assert len(holdout) >= 99  # alpha = 0.01 needs a null of at least 99
    return train, synthetic, holdout


def test_covid_same_person_published_twice_is_found():
    """Patients 97 and 178 are one person published twice, with four near-identical image pairs
    (data README). With 97 in training and 178 synthetic, the four pairs must be flagged and
    linked to 97, and nothing else."""
    train, synthetic, holdout = _covid_split()
    c = audit(train, synthetic, holdout).checks["copies"]
    assert c.status.value == "assessed"
    assert c.n_flagged == 4 and c.n_synthetic == 5
    assert {f.train_patient_id for f in c.flagged} == {"97"}
    assert all(f.similarity > 0.999 for f in c.flagged)
    assert len({f.train_id for f in c.flagged}) == 4


def test_pneumoniamnist_loads_from_its_npz_layout(tmp_path):
    """The MedMNIST files use train_images/... keys, not 'images': the error says which keys exist."""
    from privaudit.errors import InputError

    path = realdata("medmnist/pneumoniamnist.npz")
    with pytest.raises(InputError, match="keys: train_images"):
        load_imageset(path)
    data = np.load(path)
    np.savez(tmp_path / "p.npz", images=data["val_images"], label=data["val_labels"])
    s = load_imageset(tmp_path / "p.npz")
    assert len(s) == 524 and s.labels is not None and set(s.labels) == {"0", "1"}


def test_covid_report_and_shareable_report(tmp_path):
    """The real-data audit's report shows the four pairs as thumbnails (training, synthetic, difference); the --no-images one
    holds no image data and pseudonymises patient 97; both re-gate to the same verdict."""
    import json

    from privaudit.cli import main
    from privaudit.results import load_results

    train, synthetic, holdout = _covid_split()
    audit(train, synthetic, holdout, out=tmp_path / "full")
    audit(train, synthetic, holdout, out=tmp_path / "shared", no_images=True)
    full = (tmp_path / "full" / "report.html").read_text()
    assert full.count('src="data:image/png') == 12 and "This report contains patient images" in full
    shared_html = (tmp_path / "shared" / "report.html").read_text()
    shared = load_results(tmp_path / "shared" / "results.json")
    assert "data:image/png" not in shared_html and "covid:" not in shared_html
    assert {f["train_patient_id"] for f in shared["checks"]["copies"]["flagged"]} == {"patient-001"}
    assert '"97"' not in json.dumps(shared) and "(patient 97)" not in shared_html
    for out in ("full", "shared"):
        assert main(["gate", str(tmp_path / out / "results.json")]) == 1  # 4 of 5 flagged: fail
