"""The reid check and its identity probe against planted ground truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from conftest import ATTACKS_EMBEDDER_OPTIONS, ATTACKS_PROFILE, realdata
from privaudit.checks.base import CheckStatus
from privaudit.checks.reid import ReidOptions, probe_power
from privaudit.config import AuditConfig
from privaudit.data import ImageSet
from privaudit.errors import ConfigError
from privaudit.phantoms import _patients, make_study, scan, transform_copy
from privaudit.pipeline import audit


def cfg(**reid: object) -> AuditConfig:
    return AuditConfig.from_dict(
        {"embedders": ["pixels"], "checks": ["reid"], "reid": reid, "embedder_options": ATTACKS_EMBEDDER_OPTIONS}
    )


def training_anatomies(seed: int, n: int):
    """The training patients' anatomies of ``make_study(seed)``: its first random stream draws
    them first (see phantoms.make_study), so drawing again gives the same patients."""
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(5)[0])
    return _patients(rng, "P", n)


@pytest.fixture(scope="module")
def half_copied(attack_study):
    rng = np.random.default_rng(1)
    patients = sorted(set(attack_study.train.patient_ids))
    copied = set(patients[::2])
    images = [transform_copy(im, "noise", rng) for im, p in zip(attack_study.train.images, attack_study.train.patient_ids) if p in copied]
    return ImageSet.from_arrays(np.stack(images)), copied


def test_probe_power_is_measured_on_held_out_patients(attack_study, half_copied):
    r = audit(attack_study.train, half_copied[0], attack_study.holdout, config=cfg()).checks["reid"]
    p = r.power
    # 120 holdout patients x 4 scans: 720 same-patient pairs; measured 0.99+ verification AUC.
    assert p.n_patients == 120 and p.n_positive_pairs == 720 and p.n_queries == 480
    assert p.verification_auc > 0.95 and p.auc_ci_low < p.verification_auc < p.auc_ci_high
    assert p.top1_accuracy > 0.8
    assert r.metrics["probe_auc_score"].value == p.verification_auc


def test_copies_of_half_the_patients_are_linked_to_them(attack_study, half_copied):
    synthetic, copied = half_copied
    result = audit(attack_study.train, synthetic, attack_study.holdout, config=cfg())
    r = result.checks["reid"]
    assert r.status is CheckStatus.ASSESSED
    linked = {p.train_patient_id for p in r.patients}
    assert linked == copied and r.n_patients_exposed == 30 and r.metrics["exposed_patient_rate"].value == 0.5
    assert r.n_linked >= 0.95 * len(synthetic)
    # Every piece of evidence names a training scan of the patient it is filed under.
    pid = dict(zip(attack_study.train.ids, attack_study.train.patient_ids))
    assert all(pid[e.train_id] == p.train_patient_id for p in r.patients for e in p.evidence)
    reasons = {x.metric: x.status.value for x in result.verdict.reasons}
    assert reasons["reid.linkage_rate"] == "fail" and reasons["reid.probe_auc_score"] == "pass"


def test_new_scans_of_training_patients_are_linked_not_only_copies(attack_study):
    """Synthetic = fresh renders (new pose, exposure, noise) of 10 training patients: not copies
    of any training scan, but the same people. The probe must link most to the right patient."""
    anatomies = training_anatomies(0, ATTACKS_PROFILE["n_train_patients"])[:10]
    rng = np.random.default_rng(99)
    images = [scan(a, rng, size=32) for _, a, _ in anatomies for _ in range(3)]
    truth = [pid for pid, _, _ in anatomies for _ in range(3)]
    r = audit(attack_study.train, ImageSet.from_arrays(np.stack(images)), attack_study.holdout, config=cfg()).checks["reid"]
    assert r.status is CheckStatus.ASSESSED
    by_synthetic = {e.synthetic_id: p.train_patient_id for p in r.patients for e in p.evidence}
    right = sum(by_synthetic.get(str(i)) == t for i, t in enumerate(truth))
    wrong = sum(sid in by_synthetic and by_synthetic[sid] != truth[int(sid)] for sid in by_synthetic)
    assert r.n_linked >= 20 and right >= 15 and wrong <= 1, (r.n_linked, right, wrong)


def test_fresh_patients_are_not_linked(attack_study):
    r = audit(attack_study.train, attack_study.clean, attack_study.holdout, config=cfg()).checks["reid"]
    assert r.status is CheckStatus.ASSESSED and r.n_linked == 0 and r.metrics["linkage_rate"].value == 0.0
    assert r.metrics["linkage_rate"].floor == r.detection_floor / 60


@pytest.mark.slow
def test_linkage_of_fresh_patients_stays_at_its_nominal_level_over_seeds():
    """Synthetic = new patients, four independent studies (a probe fitted for each). Per image,
    p <= 0.05 must happen at most at the 99.9 % binomial quantile of the 5 % rate (pooled over
    seeds); under BH at 5 %, a set with any link at all may happen by chance (probability <= 5 %
    each), so at most one of the four may have one."""
    below = total = any_link = 0
    for seed in range(1, 5):
        s = make_study(seed=seed, n_train_patients=20, n_holdout_patients=60, scans_per_patient=4, n_synthetic=60, size=32)
        result = audit(s.train, s.clean, s.holdout, config=cfg())
        r = result.checks["reid"]
        assert r.status is CheckStatus.ASSESSED, r.reason
        from privaudit.checks.reid import _ratio
        from privaudit.search import knn, knn_excluding_self
        from privaudit.stats import conformal_pvalues

        # The per-image p-values themselves, recomputed in the same space from the audit's embeddings.
        space = _identity_space(s)
        syn = _ratio(knn(space["synthetic"], space["train"]).similarities[:, 0], knn(space["synthetic"], space["holdout"]).similarities[:, 0])
        null = _ratio(knn(space["holdout"], space["train"]).similarities[:, 0],
                      knn_excluding_self(space["holdout"], groups=np.asarray(s.holdout.patient_ids)).similarities[:, 0])
        p = conformal_pvalues(syn, null)
        below += int((p <= 0.05).sum())
        total += p.size
        any_link += r.n_linked > 0
    assert below <= binom.ppf(0.999, total, 0.05), (below, total)
    assert any_link <= 1


def _identity_space(study) -> dict[str, np.ndarray]:
    from privaudit.embed import get_embedder
    from privaudit.embed.identity import IdentityOptions

    emb = get_embedder("identity", options=IdentityOptions(**ATTACKS_EMBEDDER_OPTIONS["identity"]))
    from privaudit.pipeline import _as_cache

    emb.fit(study.train, seed=0, cache=_as_cache(None))
    return {role: emb.embed(getattr(study, role)) for role in ("train", "holdout", "clean")} | {"synthetic": emb.embed(study.clean)}


def test_a_weak_probe_is_not_assessed_never_passed(attack_study):
    result = audit(attack_study.train, attack_study.clean, attack_study.holdout, config=cfg(min_probe_auc=0.9999))
    r = result.checks["reid"]
    assert r.status is CheckStatus.NOT_ASSESSED and "below the 0.9999 it needs" in r.reason
    assert r.power is not None and r.metrics["probe_auc_score"].value is not None  # the power is still shown
    outcomes = {x.metric: x for x in result.verdict.reasons}
    assert outcomes["reid.linkage_rate"].status.value == "not_assessed" and result.verdict.status.value == "fail"


@pytest.mark.parametrize("case, reason", [("no-holdout", "no holdout was given"), ("no-train-ids", "training set has no patient ids"), ("no-holdout-ids", "holdout has no patient ids")])
def test_not_assessed_with_a_reason(attack_study, case, reason):
    s = attack_study
    train, holdout = s.train, s.holdout
    if case == "no-holdout":
        holdout = None
    elif case == "no-train-ids":
        train = ImageSet.from_arrays(np.stack(s.train.images))
    else:
        holdout = ImageSet.from_arrays(np.stack(s.holdout.images))
    r = audit(train, s.clean, holdout, config=cfg()).checks["reid"]
    assert r.status is CheckStatus.NOT_ASSESSED and reason in r.reason and r.n_linked == 0


def test_reid_shares_the_searches_copies_made_in_the_same_space(attack_study, half_copied, monkeypatch):
    """With reid in a space of the copies check, the searches both need (synthetic -> training,
    holdout -> training) run once, through the audit context; reid's figures are those of reid
    alone."""
    import privaudit.checks.base as base
    import privaudit.checks.reid as reid_module
    from privaudit import search

    calls: list[tuple[int, int]] = []
    spy = lambda q, b, *, k=1, **kw: (calls.append((len(q), len(b))), search.knn(q, b, k=k, **kw))[1]  # noqa: E731
    monkeypatch.setattr(base, "knn", spy)
    monkeypatch.setattr(reid_module, "knn", spy, raising=False)  # where reid searched on its own before
    syn, train, hold = half_copied[0], attack_study.train, attack_study.holdout
    both = AuditConfig.from_dict({"embedders": ["pixels"], "checks": ["copies", "reid"], "embedder_options": ATTACKS_EMBEDDER_OPTIONS,
                                  "reid": {"embedder": "pixels", "min_probe_auc": 0.5}, "copies": {"positive_control": 0, "bootstrap": 0}})
    r = audit(train, syn, hold, config=both).checks["reid"]
    assert r.status is CheckStatus.ASSESSED
    assert calls.count((len(syn), len(train))) == 1 and calls.count((len(hold), len(train))) == 1
    alone = audit(train, syn, hold, config=cfg(embedder="pixels", min_probe_auc=0.5)).checks["reid"]
    assert (r.n_linked, r.n_null, r.patients, r.metrics) == (alone.n_linked, alone.n_null, alone.patients, alone.metrics)


def test_probe_power_on_hand_made_vectors():
    """Two patients of two identical vectors each, orthogonal to each other: AUC 1, top-1 1.
    Patients (v0, v1) and (v1, v0): both same-patient pairs score 0; of the different-patient
    pairs half score 1 and half 0 (ties count one half), so the AUC is 0.5 x 0.5 = 0.25 (up to
    the sampling of different-patient pairs), and every nearest neighbour is the other patient."""
    v = np.eye(4, dtype=np.float32)
    good = probe_power(v[[0, 0, 1, 1]], np.array(["a", "a", "b", "b"]), ReidOptions(bootstrap=0), np.random.default_rng(0))
    assert (good.verification_auc, good.top1_accuracy, good.n_patients, good.n_positive_pairs) == (1.0, 1.0, 2, 2)
    bad = probe_power(v[[0, 1, 1, 0]], np.array(["a", "a", "b", "b"]), ReidOptions(bootstrap=0), np.random.default_rng(0))
    assert bad.verification_auc == pytest.approx(0.25, abs=0.01) and bad.top1_accuracy == 0.0


def test_bad_options():
    with pytest.raises(ConfigError, match="reid.min_probe_auc must lie in"):
        AuditConfig.from_dict({"reid": {"min_probe_auc": 0.2}})
    with pytest.raises(ConfigError, match="unknown key 'fdrr'"):
        AuditConfig.from_dict({"reid": {"fdrr": 0.1}})


@pytest.mark.slow
@pytest.mark.realdata
def test_covid_same_person_published_twice_is_linked():
    """Patients 97 and 178 of the COVID-19 collection are the same person. With 97 in training
    and 178's images as the synthetic set, reid must link them to 97. Training: 97 and every
    third other patient; holdout: the rest (not 178)."""
    data = np.load(realdata("covid_chestxray/covid_cxr_licensed_256.npz"), allow_pickle=False)
    pid = data["patient_id"].astype(str)
    others = sorted(set(pid) - {"97", "178"})
    train_p = {"97"} | set(others[::3])
    is_train = np.isin(pid, list(train_p))
    is_hold = ~is_train & (pid != "178")
    train = ImageSet.from_arrays(data["images"][is_train], patient_ids=list(pid[is_train]))
    holdout = ImageSet.from_arrays(data["images"][is_hold], patient_ids=list(pid[is_hold]))
    synthetic = ImageSet.from_arrays(data["images"][pid == "178"])
    config = AuditConfig.from_dict({"embedders": ["pixels"], "checks": ["reid"]})
    r = audit(train, synthetic, holdout, config=config).checks["reid"]
    assert r.power.verification_auc > 0.85
    linked = {p.train_patient_id: p.n_linked for p in r.patients}
    assert set(linked) == {"97"} and linked["97"] >= 4, (r.status, r.reason, linked)
