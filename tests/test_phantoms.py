"""The phantom generator: seeded, patient-structured, with consistent ground truth."""

from __future__ import annotations

import numpy as np

from privaudit.phantoms import COPY_TRANSFORMS, make_study, write_study
from privaudit.data import load_imageset


def test_same_seed_same_pixels_other_seed_other_pixels():
    a, b, c = (make_study(n_train_patients=4, n_holdout_patients=3, n_synthetic=10, size=32, seed=s) for s in (5, 5, 6))
    assert a.train.content_sha256 == b.train.content_sha256 and a.leaky.content_sha256 == b.leaky.content_sha256
    assert a.train.content_sha256 != c.train.content_sha256


def test_structure_and_ground_truth(study):
    assert set(study.train.patient_ids).isdisjoint(study.holdout.patient_ids)
    assert len(study.copies) == round(0.2 * len(study.leaky))
    assert {c.transform for c in study.copies} == set(COPY_TRANSFORMS)
    for c in study.copies:
        copy = study.leaky.images[study.leaky.index_of(c.synthetic_id)]
        source = study.train.images[study.train.index_of(c.train_id)]
        assert c.train_patient_id == study.train.patient_ids[study.train.index_of(c.train_id)]
        if c.transform == "exact":
            np.testing.assert_array_equal(copy, source)
        else:
            # Mild: not identical, but still close to its source (a 1-pixel shift at 32 px is the
            # largest change, correlation ~0.87; the other families stay above 0.99).
            assert not np.array_equal(copy, source)
            floor = 0.85 if c.transform == "shift" else 0.98
            assert np.corrcoef(copy.ravel(), source.ravel())[0, 1] > floor
    for img in study.train.images[:20]:
        assert img.shape == (32, 32) and 0.0 <= img.min() and img.max() <= 1.0


def test_scans_of_one_patient_resemble_each_other_more_than_other_patients(study):
    x = np.stack([im.ravel() - im.mean() for im in study.train.images])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    pids = np.array(study.train.patient_ids)
    same = (pids[:, None] == pids[None, :]) & ~np.eye(len(pids), dtype=bool)
    other = pids[:, None] != pids[None, :]
    assert sims[same].mean() > sims[other].mean() + 0.05


def test_written_study_loads_back(study_files, study):
    train = load_imageset(study_files["train"], role="train")
    assert len(train) == len(study.train) and train.patient_ids == study.train.patient_ids
    # 8-bit PNG: pixels come back to within half a grey level.
    np.testing.assert_allclose(train.images[0], study.train.images[0], atol=0.5 / 255 + 1e-6)
    leaky = load_imageset(study_files["leaky"], role="synthetic")
    assert leaky.patient_ids is None and len(leaky) == len(study.leaky)
    truth = (study_files["train"].parent / "leaky_truth.csv").read_text().splitlines()
    assert truth[0] == "synthetic_path,train_path,train_patient_id,transform" and len(truth) == len(study.copies) + 1
