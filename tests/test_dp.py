"""DP sweep (issue 8): Opacus training, the one-run empirical ε bound, the sweep and its CLI.

The expensive fixture, :func:`mem_sweep`, is fitted once per session: a generator trained long
without DP on 48 phantom scans (12 patients, 4 scans each; it memorises) and the same training
at ε = 1, each audited in pixel space. Every test that needs a trained generator reads it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from privaudit.cli import main
from privaudit.config import AuditConfig
from privaudit.data.imageset import ImageSet
from privaudit.dp import SweepConfig, TrainOptions, dp_sweep, load_dp_results
from privaudit.dp.empirical import epsilon_lower_bound, one_run_audit, p_value
from privaudit.dp.sweep import prepare
from privaudit.errors import ConfigError, InputError, OutputError
from privaudit.phantoms import make_study

opacus = pytest.importorskip("opacus")

CHEAP = AuditConfig(embedders=("pixels",), checks=("copies", "quality"))
# The memorising sweep also runs the membership attack. Its 12 training patients give 6 per side
# (half the training patients against as many holdout patients), under the default min_units of
# 20: lowered here, so the AUC is coarse, and the assertions below leave room for that.
# The copies check in pixels alone: the VAE's copies are untransformed, and with 240 holdout
# images the detection floor is 9 of 100; the aligned comparison as a second space costs the
# copies the one rank the floor leaves (measured: 9 flagged without it, 0 with it, the same 9
# listed above every null score either way; README, the copies check).
MEM_AUDIT = AuditConfig.from_dict({"embedders": ["pixels"], "checks": ["copies", "quality", "membership"], "membership": {"min_units": 6},
                                   "copies": {"align": False}})
MEM = dict(n_train_patients=12, n_holdout_patients=60, scans_per_patient=4, n_synthetic=10, size=32)


@pytest.fixture(scope="session")
def dp_study():
    return make_study(seed=0, **MEM)


@pytest.fixture(scope="session")
def mem_sweep(dp_study, tmp_path_factory):
    """ε = 1 and ε = inf on 48 scans, 300 epochs: the baseline memorises, DP cannot."""
    import torch

    torch.set_num_threads(1)
    cfg = SweepConfig(
        epsilons=(1.0, math.inf),
        train=TrainOptions(epochs=300, batch_size=16),
        canaries=24,
        n_synthetic=100,
        audit=MEM_AUDIT,
    )
    out = tmp_path_factory.mktemp("dp") / "sweep"
    return dp_sweep(dp_study.train, dp_study.holdout, config=cfg, out=out), cfg


def _point(result, name):
    return next(p for p in result.points if p["name"] == name)


# --- the accountant ----------------------------------------------------------------------


@pytest.mark.slow
def test_accountant_epsilon_within_one_percent_of_target(mem_sweep):
    result, _ = mem_sweep
    p = _point(result, "eps_1")
    eps = p["training"]["epsilon"]
    # make_private_with_epsilon searches σ until ε is within 0.01 below the target; the PRV
    # accountant reports the upper end of its error band, so ε must not exceed the target.
    assert 0.99 <= eps <= 1.0
    assert p["training"]["accountant"] == "prv" and p["training"]["noise_multiplier"] > 1
    base = _point(result, "eps_inf")["training"]
    # ε = inf is the same training: same Poisson rate, same number of steps, no clipping/noise.
    assert base["sample_rate"] == p["training"]["sample_rate"] and base["steps"] == p["training"]["steps"]
    assert base["epsilon"] is None and base["noise_multiplier"] == 0 and base["max_grad_norm"] is None


@pytest.mark.parametrize("target", [0.5, 4.0])
def test_rdp_accountant_within_one_percent(target):
    from privaudit.dp.generators import GENERATORS, VAEOptions
    from privaudit.dp.train import train_generator
    import torch

    torch.set_num_threads(1)
    x = torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    _, stats = train_generator(
        GENERATORS.get("vae"), x, None, n_classes=0, epsilon=target, delta=1e-3,
        options=TrainOptions(epochs=2, batch_size=8, accountant="rdp"), generator_options=VAEOptions(width=8), seed=0,
    )
    assert stats.accountant == "rdp"
    assert target * 0.99 <= stats.epsilon <= target
    assert stats.steps == 10  # 2 epochs x 5 expected batches


def test_batchnorm_generator_is_refused():
    """ModuleValidator refuses BatchNorm (it mixes the images of a batch: per-image clipping
    would bound nothing)."""
    from torch import nn

    from privaudit.dp.generators import validate

    with pytest.raises(ConfigError, match="not DP-SGD compatible"):
        validate(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))
    from privaudit.dp.generators import GENERATORS, VAEOptions

    validate(GENERATORS.get("vae").build(size=32, n_classes=2, options=VAEOptions(), seed=0))


# --- the one-run bound -------------------------------------------------------------------


def _slow_p_value(m, r, v, eps, delta):
    """Algorithm 2 of Steinke et al. 2023 written out with exact binomial terms."""
    q = math.exp(eps) / (1 + math.exp(eps))
    pmf = [math.comb(r, i) * q**i * (1 - q) ** (r - i) for i in range(r + 1)]
    beta = sum(pmf[v:])
    alpha, running = 0.0, 0.0
    for i in range(1, v + 1):
        running += pmf[v - i]
        alpha = max(alpha, running / i)
    return min(1.0, beta + alpha * delta * 2 * m)


@pytest.mark.parametrize("m,r,v,eps,delta", [(100, 20, 15, 0.5, 0.0), (100, 20, 15, 0.5, 1e-4), (500, 60, 50, 1.2, 1e-5), (50, 10, 0, 0.0, 1e-3), (50, 10, 10, 2.0, 1e-3)])
def test_p_value_matches_slow_version(m, r, v, eps, delta):
    assert p_value(m, r, v, eps, delta) == pytest.approx(_slow_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-15)


def test_bound_for_perfect_guesses_has_closed_form():
    # all r guesses right, δ = 0: q^r = 1 - confidence, so ε = logit((1 - c)^(1/r))
    for r in (10, 50, 200):
        q = 0.05 ** (1 / r)
        assert epsilon_lower_bound(1000, r, r, delta=0.0) == pytest.approx(math.log(q / (1 - q)), abs=1e-5)
    assert epsilon_lower_bound(1000, 100, 50, delta=0.0) == 0.0  # chance
    assert epsilon_lower_bound(1000, 0, 0, delta=0.0) == 0.0


def test_one_run_bound_is_valid_and_has_power_on_randomised_response():
    """A mechanism that is exactly ε-DP per canary (randomised response on the coin): the bound
    must stay under ε in about 95 % of runs, and get close to it with many canaries."""
    eps = 1.0
    over, bounds = 0, []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        included = rng.random(2000) < 0.5
        truthful = rng.random(2000) < math.exp(eps) / (1 + math.exp(eps))
        scores = np.where(truthful, included, ~included).astype(float) + rng.normal(0, 1e-3, 2000)
        b = one_run_audit(scores, included, delta=0.0, rng=rng).epsilon_lb
        bounds.append(b)
        over += b > eps
    # P(over) <= 5 % per run; 40 runs: more than 6 would happen with probability < 2 %.
    assert over <= 6
    assert np.median(bounds) > 0.5


# --- the sweep on phantoms ---------------------------------------------------------------


@pytest.mark.slow
def test_memorising_generator_is_flagged_and_eps1_is_not(mem_sweep):
    result, _ = mem_sweep
    inf, one = _point(result, "eps_inf"), _point(result, "eps_1")
    assert inf["metrics"]["copies.flagged_rate"]["value"] > 0.02
    assert one["metrics"]["copies.flagged_rate"]["value"] == 0.0
    assert inf["verdict"] == "fail"
    # The membership attack, run by the sweep's audits like any registered check, sees it too.
    # Measured (seed 0): AUC 0.88 (95 % CI 0.73 to 1.0) without DP, 0.36 (0.15 to 0.58) at ε = 1.
    mia_inf, mia_one = inf["metrics"]["membership.auc_risk"], one["metrics"]["membership.auc_risk"]
    assert mia_inf["value"] > 0.7 and mia_inf["ci_low"] > 0.5
    assert mia_one["value"] < 0.7 and mia_one["ci_low"] < 0.5


@pytest.mark.slow
def test_eps1_generator_beats_noise_on_fid(mem_sweep, dp_study):
    """Quality floor: the ε = 1 samples are closer to real images than uniform noise is, by FID
    in the audit's (pixel) space against the same holdout."""
    from privaudit.pipeline import audit

    result, cfg = mem_sweep
    data = prepare(dp_study.train, dp_study.holdout, cfg)
    rng = np.random.default_rng(0)
    noise = ImageSet.from_arrays(rng.random((100, 32, 32)).astype(np.float32))
    fid_noise = audit(data.train_used, noise, data.holdout, config=CHEAP, cache=False).checks["quality"].metrics["fid_distance"].value
    fid_eps1 = _point(result, "eps_1")["metrics"]["quality.fid_distance"]["value"]
    fid_inf = _point(result, "eps_inf")["metrics"]["quality.fid_distance"]["value"]
    # Stated margin: at most 0.8 x the FID of noise (measured: 1.25 vs 1.86, ratio 0.67, seed 0;
    # 48 scans at ε = 1 need σ/C = 23, so the samples are blurred blobs, but not noise).
    assert fid_eps1 < 0.8 * fid_noise
    assert fid_inf < fid_eps1  # and DP costs quality


@pytest.mark.slow
def test_eps1_quality_floor_holds_over_seeds(dp_study, tmp_path):
    """The quality floor over seeds (seed 0 is the fixture's): the ε = 1 generator's samples are
    closer to real images than uniform noise is, by FID against the same holdout, with a stated
    margin of 10 %. Measured FID(ε = 1) / FID(noise): 0.67 (seed 0), 0.81 (seed 1), 0.70 (seed 2);
    a single seed's 0.8 margin (the fixture test) does not hold for every seed."""
    from privaudit.pipeline import audit

    rng = np.random.default_rng(0)
    noise = ImageSet.from_arrays(rng.random((100, 32, 32)).astype(np.float32))
    ratios = []
    for seed in (1, 2):
        cfg = SweepConfig(epsilons=(1.0,), train=TrainOptions(epochs=300, batch_size=16), canaries=0, n_synthetic=100, audit=CHEAP, seed=seed)
        result = dp_sweep(dp_study.train, dp_study.holdout, config=cfg, out=tmp_path / f"s{seed}")
        data = prepare(dp_study.train, dp_study.holdout, cfg)
        fid_noise = audit(data.train_used, noise, data.holdout, config=CHEAP, cache=False).checks["quality"].metrics["fid_distance"].value
        ratios.append(_point(result, "eps_1")["metrics"]["quality.fid_distance"]["value"] / fid_noise)
    assert max(ratios) < 0.9, ratios


@pytest.mark.slow
def test_empirical_bound_positive_at_inf_and_below_accountant_elsewhere(mem_sweep):
    result, _ = mem_sweep
    inf, one = _point(result, "eps_inf"), _point(result, "eps_1")
    assert inf["empirical"]["epsilon_lb"] > 0
    assert result.data["positive_control"]["passed"] is True
    assert one["empirical"]["epsilon_lb"] <= one["training"]["epsilon"]
    assert inf["empirical"]["n_selection"] + inf["empirical"]["n_evaluation"] == 24


@pytest.mark.slow
def test_results_validate_against_schema_and_report_has_curves(mem_sweep):
    result, _ = mem_sweep
    data = load_dp_results(result.out / "dp_results.json")
    assert data["complete"] and data["privacy"]["unit"] == "image" and data["privacy"]["max_scans_per_patient"] == 4
    assert "about 4ε" in data["privacy"]["statement"]
    html = (result.out / "dp_report.html").read_text()
    assert html.count("data:image/svg+xml;base64,") >= 3 and "quality.fid_distance" in html
    for p in data["points"]:
        assert (result.out / p["files"]["results"]).is_file() and (result.out / p["files"]["generator"]).is_file()


def test_load_dp_results_refuses_other_files(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(InputError, match="not a privaudit dp_results.json"):
        load_dp_results(bad)
    bad.write_text("{nope")
    with pytest.raises(InputError, match="cannot be read as JSON"):
        load_dp_results(bad)


def test_one_scan_per_patient_and_canaries(dp_study):
    cfg = SweepConfig(one_scan_per_patient=True, canaries=4, audit=CHEAP)
    data = prepare(dp_study.train, dp_study.holdout, cfg)
    assert data.max_scans_per_patient == 1
    assert len(data.train_used) == 12 - 4 + int(data.canary_included.sum())
    assert data.delta == pytest.approx(1 / (10 * len(data.train_used)))
    stamped = np.stack(data.canaries.images)
    bases = np.stack(data.canary_bases.images)
    changed = (stamped != bases).reshape(4, -1).mean(1)
    assert np.all(changed > 0.1)  # a 16 x 16 random patch on each (about half its pixels flip)
    with pytest.raises(InputError, match="needs patient ids"):
        prepare(ImageSet.from_arrays(np.zeros((20, 32, 32), np.float32)), None, cfg)


def test_resume_keeps_finished_points(dp_study, tmp_path):
    import torch

    torch.set_num_threads(1)
    cfg = SweepConfig(epsilons=(2.0, math.inf), train=TrainOptions(epochs=2, batch_size=16), canaries=8, n_synthetic=20, audit=CHEAP)
    out = tmp_path / "s"
    first = dp_sweep(dp_study.train, dp_study.holdout, config=cfg, out=out)
    kept = (out / "points" / "eps_2" / "point.json").read_bytes()
    stamp = os.stat(out / "points" / "eps_2" / "generator.pt").st_mtime_ns
    (out / "points" / "eps_inf" / "point.json").unlink()  # as if interrupted during the last point
    seen = []
    second = dp_sweep(dp_study.train, dp_study.holdout, config=cfg, out=out, progress=seen.append)
    assert (out / "points" / "eps_2" / "point.json").read_bytes() == kept
    assert os.stat(out / "points" / "eps_2" / "generator.pt").st_mtime_ns == stamp
    assert any("finished earlier, kept" in s for s in seen) and any("training epoch" in s for s in seen)
    # same seed, same settings: the retrained point has the same synthetic set
    assert second.points[1]["synthetic"] == first.points[1]["synthetic"]
    with pytest.raises(OutputError, match="other settings"):
        dp_sweep(dp_study.train, dp_study.holdout, config=SweepConfig(epsilons=(2.0,), canaries=8, audit=CHEAP), out=out)


# --- the command line --------------------------------------------------------------------


@pytest.fixture(scope="session")
def dp_files(dp_study, tmp_path_factory):
    from privaudit.phantoms import write_study

    return write_study(dp_study, tmp_path_factory.mktemp("dpfiles"))


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--epsilons", "1,x"], "'x' is not a number"),
        (["--epsilons", "-1"], "must be positive"),
        (["--epsilons", "1,1"], "listed twice"),
        (["--delta", "2"], "--delta must lie in (0, 1)"),
        (["--generator", "vea"], "did you mean 'vae'"),
        (["--epochs", "0"], "expected a positive integer"),
        (["--checks", "copies,nope"], "unknown check 'nope'"),
        (["--canaries", "1000"], "at most half the training images"),
        (["--device", "cuda"], "CUDA is not available"),
    ],
    ids=["eps-text", "eps-negative", "eps-twice", "delta", "generator", "epochs", "check", "canaries", "cuda"],
)
def test_cli_bad_input_is_one_line_exit_2(argv, message, dp_files, tmp_path, capsys):
    import torch

    if argv[0] == "--device" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code = main(["dp-sweep", "--train", str(dp_files["train"]), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # nothing written on bad input


def test_cli_runs_and_refuses_a_users_folder(dp_files, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["dp-sweep", "--train", str(dp_files["train"]), "--holdout", str(dp_files["holdout"]), "--epsilons", "3",
            "--epochs", "1", "--canaries", "8", "--n-synthetic", "20", "--embedder", "pixels", "--checks", "copies", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "ε 3: accountant" in text and "results:" in text
    assert json.loads((out / "dp_results.json").read_text())["complete"] is True
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(argv[:-1] + [str(mine)]) == 2
    assert "not empty" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "keep"


def test_cli_help_mentions_unit_and_exit_codes(capsys):
    assert main(["dp-sweep", "--help"]) == 0
    text = capsys.readouterr().out
    assert "per training image" in text and "130" in text and "--one-scan-per-patient" in text


@pytest.mark.slow
def test_copies_check_recall_on_real_generator_copies(mem_sweep, dp_study, capsys):
    """The memorising generator's samples are a real-generator test case for the copies check.

    Ground truth, independent of the check: a sample is a copy of training scan t when it is
    closer to t (pixel L2 at 32 px) than any other scan of t's patient is: closer than a re-scan
    of the same person can be.
    """
    result, cfg = mem_sweep
    data = prepare(dp_study.train, dp_study.holdout, cfg)
    p = _point(result, "eps_inf")
    with np.load(result.out / p["files"]["synthetic"]) as z:
        syn = z["images"].reshape(len(z["images"]), -1).astype(np.float64)
    train = np.stack(data.train_used.images).reshape(len(data.train_used), -1).astype(np.float64)
    pids = np.array(data.train_used.patient_ids)
    d_st = np.sqrt(((syn[:, None, :] - train[None, :, :]) ** 2).sum(-1))
    d_tt = np.sqrt(((train[:, None, :] - train[None, :, :]) ** 2).sum(-1))
    same = (pids[:, None] == pids[None, :]) & ~np.eye(len(train), dtype=bool)
    rescan = np.where(same, d_tt, np.inf).min(1)  # nearest other scan of the same patient
    nearest = d_st.argmin(1)
    truth = d_st[np.arange(len(syn)), nearest] < rescan[nearest]
    flagged = {int(f["synthetic_id"].rsplit("-", 1)[1]) for f in json.loads((result.out / p["files"]["results"]).read_text())["checks"]["copies"]["flagged"]}
    hits = sum(1 for i in flagged if truth[i])
    recall = hits / max(1, truth.sum())
    with capsys.disabled():
        print(f"\ncopies check on the memorising VAE: {truth.sum()} true copies of {len(syn)}, {len(flagged)} flagged, {hits} of them true: recall {recall:.2f}")
    assert truth.sum() > 0
    assert hits >= 1 and hits >= 0.5 * len(flagged)  # it finds some, and what it flags is mostly real copies


@pytest.mark.parametrize("epsilon", [5.0, math.inf])
def test_empty_poisson_batches_are_steps(epsilon):
    """With 12 images and an expected batch of 1, about a third of Poisson batches are empty;
    each is still a step (DP: noise added and counted), never a crash or a skipped step."""
    import torch

    from privaudit.dp.generators import GENERATORS, VAEOptions
    from privaudit.dp.train import train_generator

    torch.set_num_threads(1)
    x = torch.rand(12, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    _, stats = train_generator(GENERATORS.get("vae"), x, None, n_classes=0, epsilon=epsilon, delta=1e-3,
                               options=TrainOptions(epochs=3, batch_size=1), generator_options=VAEOptions(width=8), seed=0)
    assert stats.steps == 36
    if math.isfinite(epsilon):
        assert 0.99 * epsilon <= stats.epsilon <= epsilon
