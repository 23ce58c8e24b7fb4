"""The quality check: against the holdout, next to the real-vs-real baseline, through audit()."""

from __future__ import annotations

import json

import numpy as np
import pytest

from privaudit.checks.base import CheckStatus
from privaudit.config import AuditConfig
from privaudit.data import ImageSet
from privaudit.errors import ConfigError
from privaudit.pipeline import audit
from privaudit.policy import Policy

ROLES_ONLY = AuditConfig(checks=("quality",))


def _strip_labels(s: ImageSet) -> ImageSet:
    return ImageSet(images=s.images, ids=s.ids, patient_ids=s.patient_ids, source=s.source)


@pytest.fixture(scope="module")
def noise_set(study) -> ImageSet:
    """A useless synthetic set: uniform noise, with labels."""
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(len(study.clean), 32, 32)).astype(np.float32)
    return ImageSet.from_arrays(images, labels=list(study.clean.labels), source="noise")


def test_clean_set_is_assessed_with_every_figure_and_its_baseline(clean_result, study):
    q = clean_result.checks["quality"]
    assert q.status is CheckStatus.ASSESSED and q.embedder == "pixels"
    assert (q.n_train, q.n_synthetic, q.n_holdout, q.n_compared) == (len(study.train), len(study.clean), len(study.holdout), len(study.clean))
    assert [f.metric for f in q.figures] == ["precision_score", "recall_score", "density_score", "coverage_score", "fid_distance", "kid_distance"]
    for f in q.figures:
        assert f.synthetic.value is not None and f.baseline.value is not None, f.metric
        if f.metric != "kid_distance":
            assert f.synthetic.ci_low <= f.synthetic.value <= f.synthetic.ci_high, f.metric
    assert q.cas is not None and q.cas_reason is None and q.cas.n_test == len(study.holdout)
    assert q.cas.n_test_groups == study.holdout.n_patients  # intervals resample patients
    assert any("comparable only with figures from the same embedder" in w for w in q.warnings)
    assert any("FID is biased upwards at small n" in w for w in q.warnings)
    # The clean set is as good as real data by construction: close to the baseline.
    assert q.metrics["coverage_ratio_score"].value > 0.85 and q.metrics["precision_ratio_score"].value > 0.85
    assert "real-vs-real" in q.summary


def test_a_useless_set_is_far_below_the_baseline_and_warns(study, noise_set):
    result = audit(study.train, noise_set, study.holdout)
    q = result.checks["quality"]
    f = {fig.metric: fig for fig in q.figures}
    assert f["precision_score"].synthetic.value == 0.0 and f["precision_score"].baseline.value > 0.8
    assert f["coverage_score"].synthetic.value < 0.1
    assert f["fid_distance"].synthetic.ci_low > f["fid_distance"].baseline.ci_high
    assert f["kid_distance"].synthetic.value > f["kid_distance"].baseline.value + 3 * f["kid_distance"].baseline.spread
    # No copies, so privacy passes; the default policy warns on the quality rules.
    assert result.checks["copies"].n_flagged <= 3
    assert result.verdict.status.value == "warn"
    assert {r.metric for r in result.verdict.reasons if r.status.value == "warn"} == {"quality.precision_ratio_score", "quality.coverage_ratio_score"}


def test_shuffled_synthetic_labels_bring_cas_to_chance(study):
    """Planted: the clean images with their labels permuted teach nothing: CAS drops to chance
    (the majority share at most) while the images, and every other figure, are unchanged."""
    rng = np.random.default_rng(1)
    shuffled = ImageSet(images=study.clean.images, ids=study.clean.ids, labels=tuple(rng.permutation(study.clean.labels)), source="shuffled")
    cfg = AuditConfig(checks=("quality",))
    honest = audit(study.train, study.clean, study.holdout, config=cfg).checks["quality"]
    broken = audit(study.train, shuffled, study.holdout, config=cfg).checks["quality"]
    assert broken.figures == honest.figures
    assert broken.cas.trtr == honest.cas.trtr
    majority = max(study.holdout.labels.count(c) for c in set(study.holdout.labels)) / len(study.holdout)
    # At n = 120 holdout images the intervals are wide: the shuffled CAS is compatible with
    # chance, the honest one is not, and the honest one is higher.
    assert broken.cas.cas_ci_low <= majority < honest.cas.cas_ci_high and broken.cas.cas < honest.cas.cas
    assert honest.cas.cas_ci_low > 0.5 and broken.cas.ratio < honest.cas.ratio


def test_unlabelled_images_skip_cas_with_a_reason_and_do_not_fail_the_gate(study):
    result = audit(_strip_labels(study.train), _strip_labels(study.clean), _strip_labels(study.holdout))
    q = result.checks["quality"]
    assert q.status is CheckStatus.ASSESSED and q.cas is None
    assert q.cas_reason == "needs class labels on every set; synthetic, train, holdout have none"
    assert q.metrics["cas_score"].value is None and q.metrics["coverage_score"].value is not None
    # Nothing fails: the quality rules pass; the metadata rules warn (arrays have no headers), and
    # so does the copies control on this tiny 32 px study (it misses flipped and shifted copies).
    assert result.verdict.status.value == "warn"
    assert {r.metric for r in result.verdict.reasons if r.counts_as.value != "pass"} <= {
        "metadata.identifier_match_rate", "metadata.identifying_field_rate", "copies.control_sensitivity_score",
    }
    assert not any(r.metric.startswith("quality.") and r.counts_as.value != "pass" for r in result.verdict.reasons)
    # A policy that gates on CAS says "not assessed" and, as written, only warns.
    policy = Policy.from_dict({"quality": {"cas_ratio_score": {"warn": 0.8, "not_assessed": "warn"}}})
    verdict = policy.evaluate(result.checks)
    assert verdict.status.value == "warn" and verdict.reasons[0].status.value == "not_assessed"


def test_without_holdout_quality_is_not_assessed_and_never_passes(study):
    result = audit(study.train, study.clean)
    q = result.checks["quality"]
    assert q.status is CheckStatus.NOT_ASSESSED and "needs a holdout" in q.reason
    assert all(m.value is None for m in q.metrics.values()) and q.figures == ()
    outcomes = {r.metric: r for r in result.verdict.reasons}
    assert outcomes["quality.coverage_ratio_score"].status.value == "not_assessed"
    assert outcomes["quality.coverage_ratio_score"].counts_as.value == "warn"
    assert result.verdict.status.value != "pass"


def test_sizes_are_matched_and_the_subsample_is_seeded(study):
    big = ImageSet(
        images=study.clean.images + study.leaky.images[:60],
        ids=study.clean.ids + tuple(f"x/{i}" for i in range(60)),
        labels=study.clean.labels + study.leaky.labels[:60],
        source="big",
    )
    small_train = study.train.subset(range(90))
    q = audit(small_train, big, study.holdout, config=ROLES_ONLY).checks["quality"]
    assert q.n_compared == 90 and q.cas.n_train_synthetic == 90 and q.cas.n_train_real == 90
    assert any("compared through a random subset of 90" in w for w in q.warnings)
    again = audit(small_train, big, study.holdout, config=ROLES_ONLY).checks["quality"]
    assert again.figures == q.figures and again.cas == q.cas
    other = audit(small_train, big, study.holdout, config=ROLES_ONLY.replace(seed=1)).checks["quality"]
    assert other.figures != q.figures


def test_max_compared_caps_every_side_and_says_so(study):
    cap = 40
    assert min(len(study.train), len(study.clean), len(study.holdout)) > cap
    config = AuditConfig.from_dict({"checks": ["quality"], "quality": {"max_compared": cap, "fid_groups": 5}})
    q = audit(study.train, study.clean, study.holdout, config=config).checks["quality"]
    assert (q.n_compared, q.n_holdout_compared, q.n_holdout) == (cap, cap, len(study.holdout))
    assert all(f.n == cap for f in q.figures)
    assert q.cas.n_test == cap and q.cas.n_train_synthetic == cap and q.cas.n_train_real == cap
    assert q.cas.n_test_groups < cap  # the holdout subset keeps its patient ids for the CAS intervals
    assert any(f"At most {cap} images per side" in w and f"{cap} of the {len(study.holdout)} holdout images" in w for w in q.warnings)
    fid_fig = next(f for f in q.figures if f.metric == "fid_distance")
    assert "5 groups" in fid_fig.uncertainty and fid_fig.synthetic.ci_low < fid_fig.synthetic.value < fid_fig.synthetic.ci_high
    with pytest.raises(ConfigError, match="max_compared must be 0 \\(all images\\) or more than k = 5"):
        AuditConfig.from_dict({"quality": {"max_compared": 5}})


def test_options_embedder_spaces_and_validation():
    from privaudit.checks import CHECKS
    from privaudit.checks.quality import QualityOptions

    check = CHECKS.get("quality")()
    assert check.spaces(QualityOptions(), ("pixels",)) == ("pixels",)
    assert check.spaces(QualityOptions(embedder="pixels"), ("other", "pixels")) == ("pixels",)
    cfg = AuditConfig.from_dict({"checks": ["quality"], "quality": {"embedder": "pixels", "k": 3, "cas_classifier": "cnn"}})
    assert cfg.options_for("quality") == QualityOptions(embedder="pixels", k=3, cas_classifier="cnn")
    for bad, message in [
        ({"embedder": "pixel"}, "unknown embedder 'pixel' \\(did you mean 'pixels'\\?\\)"),
        ({"k": 0}, "quality.k must be an integer of at least 1"),
        ({"cas_classifier": "svm"}, "expected one of 'linear', 'cnn'"),
        ({"fid_groups": -1}, "quality.fid_groups must be an integer of at least 0"),
        ({"fid_groups": 1}, "must be 0 \\(no interval\\) or at least 2"),
        ({"kid_subset": 10}, "unknown key 'kid_subset' \\(did you mean 'kid_subsets'\\?\\)"),
        # A key of an earlier version is named with what replaced it.
        ({"fid_bootstrap": 20}, "\\[quality\\]: 'fid_bootstrap' was replaced by fid_groups \\(0.3.1: FID's interval comes from a delete-a-group jackknife"),
    ]:
        with pytest.raises(ConfigError, match=message):
            AuditConfig.from_dict({"quality": bad})


def test_a_synthetic_set_of_one_patient_gets_fid_without_an_interval(study):
    """A synthetic manifest whose patient_id column holds one value: FID's jackknife has no group
    to leave out. The check runs, gives the value, and says why there is no interval (this
    stopped the whole audit with an internal error before)."""
    one = ImageSet(images=study.clean.images, ids=study.clean.ids, patient_ids=("G",) * len(study.clean), source="one-patient")
    q = audit(study.train, one, study.holdout, config=ROLES_ONLY).checks["quality"]
    fid = next(f for f in q.figures if f.metric == "fid_distance")
    assert q.status is CheckStatus.ASSESSED and fid.synthetic.value is not None
    assert fid.synthetic.ci_low is None and fid.baseline.ci_low is not None
    assert any("FID (synthetic) has no interval" in w for w in q.warnings)


def test_too_few_images_is_not_assessed(study):
    q = audit(study.train, study.clean.subset(range(4)), study.holdout, config=ROLES_ONLY).checks["quality"]
    assert q.status is CheckStatus.NOT_ASSESSED and "needs more than k = 5 images" in q.reason


@pytest.mark.slow
def test_cnn_classifier_option(study):
    cfg = AuditConfig.from_dict({"checks": ["quality"], "quality": {"cas_classifier": "cnn"}})
    q = audit(study.train, study.clean, study.holdout, config=cfg).checks["quality"]
    assert q.cas is not None and "CNN" in q.cas.classifier
    assert 0.0 <= q.cas.cas <= 1.0 and q.cas.trtr > 0.5
    again = audit(study.train, study.clean, study.holdout, config=cfg).checks["quality"]
    assert again.cas == q.cas  # seeded: same weights, same batches


def test_results_json_holds_the_quality_section(clean_result):
    data = json.loads(clean_result.to_json())
    q = data["checks"]["quality"]
    assert q["figures"][0]["baseline"]["value"] is not None and q["cas"]["per_class"]
    assert data["config"]["check_options"]["quality"]["embedder"] is None


# ---------------------------------------------------------------------------------------------
# results.json schema, report and command line
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator():
    import jsonschema

    from privaudit.results import results_schema

    return jsonschema.Draft202012Validator(results_schema())


def test_every_quality_form_validates_and_the_schema_is_strict(validator, clean_result, study):
    forms = [
        clean_result,
        audit(study.train, study.clean),  # not assessed: no holdout
        audit(_strip_labels(study.train), _strip_labels(study.clean), _strip_labels(study.holdout)),  # no CAS
    ]
    for result in forms:
        validator.validate(json.loads(result.to_json()))
    data = json.loads(clean_result.to_json())
    import copy

    for mutate in (
        lambda d: d["checks"]["quality"].update(surprise=1),
        lambda d: d["checks"]["quality"]["figures"][0]["synthetic"].update(p=1),
        lambda d: d["checks"]["quality"]["metrics"].pop("coverage_ratio_score"),
        lambda d: d["checks"]["quality"]["cas"]["per_class"][0].update(cas=2.0),
    ):
        broken = copy.deepcopy(data)
        mutate(broken)
        assert not validator.is_valid(broken)


def test_report_shows_figures_baselines_and_cas(clean_result, study):
    from privaudit.reports import render_html

    html = render_html(clean_result, images=None)
    q = clean_result.checks["quality"]
    assert 'id="check-quality"' in html and "Real-vs-real baseline" in html
    assert "Classification accuracy score" in html and "CAS / TRTR" in html
    assert "Reading these with the privacy checks" in html and "Good quality is not safety" in html
    assert f"{q.cas.n_test} labelled holdout images" in html
    unlabelled = audit(_strip_labels(study.train), _strip_labels(study.clean), _strip_labels(study.holdout))
    assert "needs class labels on every set" in render_html(unlabelled, images=None)
    no_holdout = render_html(audit(study.train, study.clean), images=None)
    assert "needs a holdout (--holdout)" in no_holdout


def test_cli_runs_quality_alone_with_a_config_file(study_files, tmp_path, capsys):
    from privaudit.cli import main

    cfg = tmp_path / "q.toml"
    cfg.write_text('checks = ["quality"]\n[quality]\nk = 3\nfid_groups = 0\n')
    argv = ["audit", "--train", str(study_files["train"]), "--synthetic", str(study_files["clean"]),
            "--holdout", str(study_files["holdout"]), "--config", str(cfg), "--out", str(tmp_path / "o")]
    # The default policy also gates on the copies check, which was not run: not assessed, fail.
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "quality: Against" in out and "copies.copy_rate: not assessed (check 'copies' was not run)" in out
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    assert data["checks"]["quality"]["k"] == 3 and data["checks"]["quality"]["figures"][4]["synthetic"]["ci_low"] is None
    cfg.write_text('[quality]\ncas_classifer = "cnn"\n')
    assert main([*argv[:-2], "--out", str(tmp_path / "p")]) == 2
    assert "unknown key 'cas_classifer' (did you mean 'cas_classifier'?)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Another embedding space, and real data
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def coarse_embedder():
    """A second registered space (pixels at 8 x 8), removed again after the test."""
    from privaudit.embed import EMBEDDERS
    from privaudit.embed.base import Preprocessing
    from privaudit.embed.pixels import PixelsEmbedder

    class Coarse(PixelsEmbedder):
        name = "coarse"
        description = "8x8 pixels (test only)"
        preprocessing = Preprocessing(size=(8, 8))
        dim = 64

    EMBEDDERS.add("coarse", Coarse)
    yield "coarse"
    EMBEDDERS._items.pop("coarse")


def test_quality_runs_in_the_space_its_option_names(study, coarse_embedder):
    cfg = AuditConfig.from_dict({"embedders": ["pixels"], "quality": {"embedder": coarse_embedder}})
    sizes = {"train": len(study.train), "synthetic": len(study.clean), "holdout": len(study.holdout)}
    assert cfg.spaces_needed(sizes) == ("pixels", "coarse")
    result = audit(study.train, study.clean, study.holdout, config=cfg)
    assert [e.name for e in result.embedders] == ["pixels", "coarse"]
    assert result.checks["copies"].embedders == ("pixels",)
    q = result.checks["quality"]
    assert q.embedder == "coarse" and "64-d" in q.feature_space and "coarse" in q.cas.classifier
    primary = audit(study.train, study.clean, study.holdout, config=ROLES_ONLY).checks["quality"]
    assert q.figures != primary.figures


@pytest.mark.realdata
def test_pneumoniamnist_real_images_pass_and_noise_warns():
    """Real chest X-rays (PneumoniaMNIST val) against a random training subset and the test split:
    both quality ratios near 1; the same images half replaced by noise lose precision."""
    from conftest import realdata

    data = np.load(realdata("medmnist/pneumoniamnist.npz"))
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(data["train_images"]), 1000, replace=False))
    train = ImageSet.from_arrays(data["train_images"][pick], labels=data["train_labels"][pick])
    holdout = ImageSet.from_arrays(data["test_images"], labels=data["test_labels"])
    real = ImageSet.from_arrays(data["val_images"], labels=data["val_labels"])
    noisy = data["val_images"].copy()
    noisy[: len(noisy) // 2] = rng.integers(0, 256, size=noisy[: len(noisy) // 2].shape, dtype=np.uint8)
    half_noise = ImageSet.from_arrays(noisy, labels=data["val_labels"])
    good = audit(train, real, holdout, config=ROLES_ONLY).checks["quality"]
    bad = audit(train, half_noise, holdout, config=ROLES_ONLY).checks["quality"]
    assert good.metrics["precision_ratio_score"].value > 0.85 and good.metrics["coverage_ratio_score"].value > 0.85
    assert good.cas.ratio > 0.9 and good.cas.n_test == 624
    assert bad.metrics["precision_ratio_score"].value < 0.6
    fid_good, fid_bad = good.figures[4], bad.figures[4]
    assert fid_bad.synthetic.ci_low > fid_good.synthetic.ci_high
