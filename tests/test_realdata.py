"""Tests on the real images in ../shared/data (skipped cleanly when the folder is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import realdata
from privaudit.data import ImageSet, load_imageset
from privaudit.pipeline import audit

pytestmark = pytest.mark.realdata


def test_covid_same_person_published_twice_is_found():
    """Patients 97 and 178 are one person published twice, with four near-identical image pairs
    (data README). With 97 in training and 178 synthetic, the four pairs must be flagged and
    linked to 97, and nothing else."""
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
