"""The copies check against planted ground truth, in both directions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from conftest import TINY
from privaudit.checks.base import CheckStatus
from privaudit.config import AuditConfig
from privaudit.data import ImageSet
from privaudit.errors import InputError
from privaudit.phantoms import make_study
from privaudit.pipeline import audit

# The pixels space resizes to 32 px; a 1-pixel shift at 32 px moves every rib edge and is not a
# copy this space can see (the learned embedders are for that). Every other family must be found.
PIXEL_VISIBLE = {"exact", "noise", "intensity", "blur"}


def test_leaky_set_copies_are_flagged_and_linked(study, leaky_result):
    copies = leaky_result.checks["copies"]
    assert copies.status is CheckStatus.ASSESSED
    flagged = {f.synthetic_id: f for f in copies.flagged}
    for planted in study.copies:
        if planted.transform in PIXEL_VISIBLE:
            assert planted.synthetic_id in flagged, planted
            hit = flagged[planted.synthetic_id]
            assert (hit.train_id, hit.train_patient_id) == (planted.train_id, planted.train_patient_id)
            assert hit.p_value == pytest.approx(1 / (copies.null.n + 1))
    exact = [flagged[p.synthetic_id].similarity for p in study.copies if p.transform == "exact"]
    assert min(exact) == pytest.approx(1.0, abs=1e-5)
    assert leaky_result.verdict.status.value == "fail"
    n_visible = sum(p.transform in PIXEL_VISIBLE for p in study.copies)
    assert copies.metrics["excess_flag_rate"].value >= n_visible / len(study.leaky) - copies.alpha_attainable


def test_clean_set_passes_and_flags_at_most_chance(clean_result):
    copies = clean_result.checks["copies"]
    assert copies.status is CheckStatus.ASSESSED
    # Every flag is a false alarm here; 99.9 % of draws stay at or below this count.
    assert copies.n_flagged <= binom.ppf(0.999, copies.n_synthetic, copies.alpha_attainable)
    reasons = {r.metric: r.status.value for r in clean_result.verdict.reasons}
    assert reasons["copies.excess_flag_rate"] == "pass"
    # In-memory arrays have no file headers: the metadata rules are not assessed and only warn.
    assert clean_result.verdict.status.value == "warn"


@pytest.mark.slow
def test_false_flag_rate_under_the_null_holds_over_seeds():
    """Synthetic = fresh non-members: the realised false-flag rate stays at the nominal level.

    Over 6 seeds x 100 images at an attainable alpha of 1/121, the expected number of flags is
    4.96; the bound is the 99.9 % binomial quantile of that count (a calibrated check fails this
    one time in a thousand; a check that flags 2x too often fails it almost surely).
    """
    flagged = total = 0
    alpha_att = None
    for seed in range(1, 7):
        s = make_study(seed=seed, **TINY)
        c = audit(s.train, s.clean, s.holdout).checks["copies"]
        flagged, total, alpha_att = flagged + c.n_flagged, total + c.n_synthetic, c.alpha_attainable
    assert flagged <= binom.ppf(0.999, total, alpha_att)


def test_threshold_and_pvalues_are_consistent(leaky_result):
    c = leaky_result.checks["copies"]
    assert all(f.similarity > c.threshold and f.p_value <= c.alpha for f in c.flagged)
    assert c.alpha_attainable == pytest.approx(math.floor(0.01 * (c.null.n + 1)) / (c.null.n + 1))
    assert c.n_above_null_max <= c.n_flagged
    assert c.null.source == "holdout" and c.null.n == TINY["n_holdout_patients"] * TINY["scans_per_patient"]


def test_duplicates_in_the_holdout_leave_the_null(study):
    """A holdout image identical to a training image would score like a copy and hide copies."""
    dup_ids = list(study.train.ids[:3])
    holdout = ImageSet(
        images=study.holdout.images + tuple(study.train.images[:3]),
        ids=study.holdout.ids + tuple(f"dup/{i}" for i in dup_ids),
        patient_ids=study.holdout.patient_ids + ("D1", "D2", "D3"),
        source="holdout+dups",
    )
    c = audit(study.train, study.leaky, holdout).checks["copies"]
    assert c.null.n == len(study.holdout)
    assert [(d.image_id, d.train_id, d.exact) for d in c.duplicates_removed] == [(f"dup/{i}", i, True) for i in dup_ids]
    assert any("were left out of the null" in w for w in c.warnings)
    # Without the clean-up, the three duplicates push the threshold to 1.0 and exact copies
    # (p = 4/(n+4) > alpha) would no longer be flagged.
    reference = audit(study.train, study.leaky, study.holdout).checks["copies"]
    assert c.n_flagged == reference.n_flagged


def test_without_holdout_the_fallback_is_named_and_still_finds_copies(study):
    result = audit(study.train, study.leaky)
    c = result.checks["copies"]
    assert c.null.source == "training_leave_one_patient_out"
    assert any("weaker than a real holdout" in w for w in c.warnings)
    assert any("no holdout" in w for w in result.warnings)
    flagged = {f.synthetic_id for f in c.flagged}
    exact = [p.synthetic_id for p in study.copies if p.transform == "exact"]
    assert set(exact) <= flagged


def test_fallback_without_patient_ids_is_leave_one_image_out(study):
    train = ImageSet(images=study.train.images, ids=study.train.ids, source="no-ids")
    c = audit(train, study.leaky).checks["copies"]
    assert c.null.source == "training_leave_one_image_out"
    assert c.n_train_patients_copied is None


def test_a_holdout_too_small_for_alpha_is_not_assessed_and_fails_the_gate(study):
    small = study.holdout.subset(range(40))  # 40 null scores: smallest p = 1/41 > 0.01
    result = audit(study.train, study.leaky, small)
    c = result.checks["copies"]
    assert c.status is CheckStatus.NOT_ASSESSED
    assert "At least 99 non-member images are needed" in c.reason
    assert c.metrics["excess_flag_rate"].value is None
    assert result.verdict.status.value == "fail"
    assert result.verdict.reasons[0].status.value == "not_assessed"
    # A larger alpha is attainable with that holdout.
    cfg = AuditConfig.from_dict({"copies": {"alpha": 0.05}})
    assert audit(study.train, study.leaky, small, config=cfg).checks["copies"].status is CheckStatus.ASSESSED


def test_holdout_sharing_patients_with_training_is_refused(study):
    overlapping = study.train.subset([0, 1])
    with pytest.raises(InputError, match=r"--holdout shares 1 patient\(s\) with --train \(P0000\)"):
        audit(study.train, study.leaky, overlapping)


def test_identical_synthetic_and_training_sets_are_all_flagged(study):
    c = audit(study.train, study.train.subset(range(len(study.train)), source="same"), study.holdout).checks["copies"]
    assert c.n_flagged == len(study.train)
    assert c.n_train_images_copied == len(study.train)


def test_same_seed_same_flags(study):
    a = audit(study.train, study.leaky, study.holdout).checks["copies"]
    b = audit(study.train, study.leaky, study.holdout).checks["copies"]
    assert a == b
