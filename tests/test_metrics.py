"""privaudit.metrics against reference implementations, closed forms and brute force."""

from __future__ import annotations

import contextlib
import doctest
import io
import itertools

import numpy as np
import pytest
import scipy.linalg

import privaudit.metrics as M
from privaudit.errors import InputError


def prdc_reference(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """The `prdc` package (Naeem et al.'s reference code, 0.2), its progress print silenced."""
    from prdc import compute_prdc

    with contextlib.redirect_stdout(io.StringIO()):
        return {name: float(v) for name, v in compute_prdc(real, fake, k).items()}


def prdc_bruteforce(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-sample PRDC quantities from full distance matrices (slow, obviously correct): squared
    distances in float64 from the differences (identical rows at exactly 0), compared as the
    reference compares them, as float32 distances."""
    r, f = real.astype(np.float64), fake.astype(np.float64)

    def dist2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    def as32(sq: np.ndarray) -> np.ndarray:
        return np.sqrt(sq.astype(np.float32))

    r_r2 = np.sort(dist2(r, r), axis=1)[:, k]  # the point itself is the 0 in column 0
    f_r2 = np.sort(dist2(f, f), axis=1)[:, k]
    d = as32(dist2(r, f))  # (real, fake)
    inside_real = d < as32(r_r2)[:, None]
    inside_fake = d < as32(f_r2)[None, :]
    return {
        "real_r2": r_r2,
        "fake_r2": f_r2,
        "counts": inside_real.sum(axis=0),
        "covered": inside_real.any(axis=1),
        "recalled": inside_fake.any(axis=1),
    }


def fid_reference(real: np.ndarray, fake: np.ndarray) -> float:
    """pytorch-fid's calculate_frechet_distance on np.mean/np.cov statistics, with
    scipy.linalg.sqrtm (re-typed from pytorch-fid 0.3, src/pytorch_fid/fid_score.py)."""
    mu1, mu2 = real.mean(axis=0), fake.mean(axis=0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + offset).dot(s2 + offset))
    covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# ---------------------------------------------------------------------------------------------
# PRDC
# ---------------------------------------------------------------------------------------------

PRDC_CASES = {
    "same-dist": dict(n_real=600, n_fake=500, d=16, k=5, shift=0.0, scale=1.0),
    "shifted": dict(n_real=1500, n_fake=1200, d=64, k=5, shift=0.3, scale=1.1),
    "low-dim-k3": dict(n_real=800, n_fake=900, d=3, k=3, shift=0.5, scale=0.7),
    "k10": dict(n_real=1000, n_fake=700, d=32, k=10, shift=0.1, scale=1.3),
}


@pytest.mark.parametrize("case", PRDC_CASES.values(), ids=PRDC_CASES.keys())
def test_prdc_equals_the_prdc_package(case):
    rs = np.random.RandomState(7)
    real = rs.normal(size=(case["n_real"], case["d"])).astype(np.float32)
    fake = (rs.normal(size=(case["n_fake"], case["d"])) * case["scale"] + case["shift"]).astype(np.float32)
    ours = M.prdc(real, fake, k=case["k"])
    ref = prdc_reference(real, fake, case["k"])
    for name in ("precision", "recall", "density", "coverage"):
        assert getattr(ours, name) == pytest.approx(ref[name], rel=1e-5), name


def test_prdc_per_sample_figures_equal_brute_force():
    rs = np.random.RandomState(3)
    real = rs.normal(size=(300, 8)).astype(np.float32)
    fake = (rs.normal(size=(250, 8)) + 0.4).astype(np.float32)
    ours = M.prdc(real, fake, k=4)
    ref = prdc_bruteforce(real, fake, 4)
    np.testing.assert_allclose(ours.real_radii**2, ref["real_r2"], rtol=1e-12)
    np.testing.assert_allclose(ours.fake_radii**2, ref["fake_r2"], rtol=1e-12)
    np.testing.assert_array_equal(ours.fake_ball_counts, ref["counts"])
    np.testing.assert_array_equal(ours.real_covered, ref["covered"])
    np.testing.assert_array_equal(ours.real_in_fake_manifold, ref["recalled"])


@pytest.mark.slow
def test_prdc_pinned_values_of_the_reference():
    """Two N(0, I) sets of 10,000 x 1,000 at k = 5, real then fake from RandomState(0): prdc 0.2
    gives 0.4910 / 0.4746 / 1.1512 / 0.9799 (other draws differ widely, so the stream is pinned)."""
    rs = np.random.RandomState(0)
    real = rs.normal(loc=0.0, scale=1.0, size=[10000, 1000]).astype(np.float32)
    fake = rs.normal(loc=0.0, scale=1.0, size=[10000, 1000]).astype(np.float32)
    r = M.prdc(real, fake, k=5)
    assert (round(r.precision, 4), round(r.recall, 4), round(r.density, 4), round(r.coverage, 4)) == (0.4910, 0.4746, 1.1512, 0.9799)


def test_duplicates_follow_the_strict_less_than_of_the_reference():
    """A real point with k or more exact duplicates has radius 0 and contains nothing, not even an
    identical fake point (prdc issue #7); fewer duplicates leave a positive radius."""
    rs = np.random.RandomState(1)
    real = rs.normal(size=(200, 12)).astype(np.float32)
    real[1:6] = real[0]  # real[0] has 5 exact duplicates: radius 0 at k = 5
    real[10:12] = real[9]  # real[9] has 2: radius > 0
    fake = rs.normal(size=(150, 12)).astype(np.float32)
    fake[0] = real[0]
    fake[1] = real[9]
    fake[20:27] = fake[19]  # a fake point with 6 duplicates: radius 0, recalls nothing
    ours = M.prdc(real, fake, k=5)
    assert ours.real_radii[:6].tolist() == [0.0] * 6 and ours.real_radii[9] > 0
    assert ours.fake_radii[19] == 0.0
    ref = prdc_reference(real, fake, 5)
    for name in ("precision", "recall", "density", "coverage"):
        assert getattr(ours, name) == pytest.approx(ref[name], rel=1e-12), name
    brute = prdc_bruteforce(real, fake, 5)
    np.testing.assert_array_equal(ours.fake_ball_counts, brute["counts"])
    assert not ours.real_covered[:6].any()  # radius-0 balls cover nothing, even an identical fake
    assert ours.real_covered[9]  # an identical fake sits inside a positive radius


def test_exact_ties_on_a_grid_are_not_inside():
    """Integer grid data: many distances equal a radius exactly; strict < excludes all of them."""
    rs = np.random.RandomState(2)
    real = rs.randint(0, 3, size=(400, 4)).astype(np.float32)
    fake = rs.randint(0, 3, size=(300, 4)).astype(np.float32)
    ours = M.prdc(real, fake, k=5)
    brute = prdc_bruteforce(real, fake, 5)
    np.testing.assert_array_equal(ours.fake_ball_counts, brute["counts"])
    np.testing.assert_array_equal(ours.real_in_fake_manifold, brute["recalled"])
    ref = prdc_reference(real, fake, 5)
    assert (ours.precision, ours.recall, ours.coverage) == (ref["precision"], ref["recall"], ref["coverage"])
    assert ours.density == pytest.approx(ref["density"], rel=1e-12)


def test_identical_sets_without_duplicates_score_one():
    x = np.random.default_rng(0).normal(size=(300, 6)).astype(np.float32)
    r = M.prdc(x, x, k=5)
    assert (r.precision, r.recall, r.density, r.coverage) == (1.0, 1.0, 1.0, 1.0)


def test_prdc_does_not_depend_on_tiles_chunks_or_order():
    """Tiles and chunks only bound memory; permuting a set permutes its per-sample figures."""
    rs = np.random.RandomState(5)
    real = rs.normal(size=(333, 10)).astype(np.float32)
    fake = (rs.normal(size=(271, 10)) * 1.2).astype(np.float32)
    r2, f2 = M.knn_radii_sq(real, 5), M.knn_radii_sq(fake, 5)
    np.testing.assert_array_equal(M.knn_radii_sq(real, 5, chunk_size=17), r2)
    np.testing.assert_array_equal(M.knn_radii_sq(real, 5, tile=50), r2)
    # Both candidate passes (the tiled triangle, FAISS's full search) give the same exact radii.
    for method in ("triangle", "faiss"):
        np.testing.assert_array_equal(M.knn_radii_sq(real, 5, tile=50, method=method), r2)
    big = M.prdc_with_radii(real, fake, r2, f2, k=5)
    small = M.prdc_with_radii(real, fake, r2, f2, k=5, tile=37)
    for name in ("fake_ball_counts", "real_covered", "real_in_fake_manifold"):
        np.testing.assert_array_equal(getattr(big, name), getattr(small, name))
    pr, pf = rs.permutation(len(real)), rs.permutation(len(fake))
    perm = M.prdc(real[pr], fake[pf], k=5)
    np.testing.assert_array_equal(perm.fake_ball_counts, big.fake_ball_counts[pf])
    np.testing.assert_array_equal(perm.real_covered, big.real_covered[pr])
    assert (perm.precision, perm.recall, perm.density, perm.coverage) == (big.precision, big.recall, big.density, big.coverage)


def test_radii_widen_the_search_when_candidates_tie(caplog):
    """30 identical points: the first candidates are all duplicates at float32 distance ~0,
    which cannot prove the radius; the search must widen (FAISS) and still be exact."""
    caplog.set_level("DEBUG", logger="privaudit.metrics")
    rs = np.random.RandomState(4)
    x = rs.normal(size=(120, 5)).astype(np.float32)
    x[:30] = x[0]
    x[40:52] = x[40] + rs.normal(scale=1e-4, size=(12, 5)).astype(np.float32)  # near-duplicates
    for k in (1, 5, 29, 35):
        expected = np.sort(((x[:, None, :].astype(np.float64) - x[None].astype(np.float64)) ** 2).sum(-1), axis=1)[:, k]
        for method in ("triangle", "faiss"):
            np.testing.assert_allclose(M.knn_radii_sq(x, k, tile=32, method=method), expected, rtol=1e-12, atol=0)
    assert "searched again" in caplog.text


def test_radii_recompute_only_the_candidates_that_may_tie(monkeypatch):
    """The radius is settled from the float64 distances of the few candidates whose float32
    distance lies within the error bound of the k-th (the others are only counted or left):
    exact against the float64 brute force at 600 dimensions (the tiled triangle), on clusters
    of near-duplicates whose distances tie within the float32 error; and fewer float64
    distances computed than candidates proposed (counted), or the shortcut did nothing."""
    from scipy.spatial.distance import cdist

    computed = []
    real = M._exact_sq_dist

    def counting(a, b):
        computed.append(len(a))
        return real(a, b)

    monkeypatch.setattr(M, "_exact_sq_dist", counting)
    rs = np.random.RandomState(6)
    centres = rs.normal(size=(40, 600))
    x = (centres[rs.randint(0, 40, size=500)] + rs.normal(scale=0.3, size=(500, 600))).astype(np.float32)
    x[100:110] = x[100] + rs.normal(scale=1e-5, size=(10, 600)).astype(np.float32)
    x[200:203] = x[200]
    dist = np.sort(cdist(x.astype(np.float64), x.astype(np.float64), "sqeuclidean"), axis=1)
    for k in (1, 5, 12):
        np.testing.assert_allclose(M.knn_radii_sq(x, k), dist[:, k], rtol=1e-12, atol=1e-12)
    proposed = sum(500 * (k + 1 + M._EXTRA_CANDIDATES) for k in (1, 5, 12))
    assert 0 < sum(computed) < proposed / 4, (sum(computed), proposed)


def test_prdc_input_errors_and_degenerate_sizes():
    x = np.zeros((10, 3), np.float32)
    with pytest.raises(InputError, match=r"got \(10,\) for real; expected a 2D array"):
        M.prdc(np.zeros(10), x)
    with pytest.raises(InputError, match="real has 3 features per row but fake has 4"):
        M.prdc(x, np.zeros((10, 4)))
    with pytest.raises(InputError, match="fake holds NaN"):
        M.prdc(x, np.full((10, 3), np.nan))
    with pytest.raises(InputError, match="k must be a positive integer"):
        M.prdc(x, x, k=0)
    with pytest.warns(RuntimeWarning, match="need more than k = 5 samples"):
        r = M.prdc(x[:5], x, k=5)
    assert np.isnan(r.precision) and np.isnan(r.coverage)


# ---------------------------------------------------------------------------------------------
# FID
# ---------------------------------------------------------------------------------------------


def test_gaussian_stats_equal_numpy():
    # Float64 input, in 16 chunks: float64 throughout (float32 input: the next test).
    x = np.random.default_rng(1).normal(size=(1000, 7)) * 3 + 1
    s = M.gaussian_stats(x, chunk_size=64)
    np.testing.assert_allclose(s.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(s.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    assert s.n == 1000


def test_frechet_distance_of_two_known_gaussians_is_the_closed_form():
    """Commuting (diagonal) covariances: FID = |m1 - m2|² + Σ (σ1 - σ2)²."""
    rng = np.random.default_rng(2)
    d = 6
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    sd1, sd2 = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    s1 = M.GaussianStats(m1, np.diag(sd1**2), 0)
    s2 = M.GaussianStats(m2, np.diag(sd2**2), 0)
    expected = ((m1 - m2) ** 2).sum() + ((sd1 - sd2) ** 2).sum()
    assert M.frechet_distance(s1, s2) == pytest.approx(expected, rel=1e-12)
    # General covariances: equals the sqrtm formula on the population parameters.
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    c1, c2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    ref = ((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    assert M.frechet_distance(M.GaussianStats(m1, c1, 0), M.GaussianStats(m2, c2, 0)) == pytest.approx(ref, rel=1e-10)


def test_fid_of_samples_converges_to_the_closed_form():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(20000, 2)) * [1.0, 2.0]
    fake = rng.normal(size=(20000, 2)) * [2.0, 1.0] + [1.0, 0.0]
    # |Δm|² = 1, Σ(σ1 - σ2)² = 1 + 1: FID = 3; sampling error at n = 20,000 is about 0.03.
    assert M.fid(real, fake) == pytest.approx(3.0, abs=0.1)


FID_SHAPES = {
    "covariance-route": (900, 700, 20),  # both full rank: Cholesky
    "one-singular": (300, 60, 100),  # 60 < d: the other covariance is factored
    "data-route": (40, 50, 200),  # n1 + n2 < d: nuclear norm of A B^T
    "both-singular": (150, 120, 160),  # covariance route would need eigh; data route is cheaper
}


@pytest.mark.parametrize("shape", FID_SHAPES.values(), ids=FID_SHAPES.keys())
def test_fid_equals_the_scipy_sqrtm_reference(shape):
    n1, n2, d = shape
    rng = np.random.default_rng(n1 + d)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    real = rng.normal(size=(n1, d)) @ mix
    fake = rng.normal(size=(n2, d)) @ mix * 1.2 + 0.05
    assert M.fid(real, fake) == pytest.approx(fid_reference(real, fake), rel=1e-7)


@pytest.mark.parametrize("which", ["cholesky-first", "cholesky-second", "eigh"])
def test_every_trace_route_agrees_with_sqrtm(which):
    rng = np.random.default_rng(9)
    d = 30
    full = lambda n: np.cov(rng.normal(size=(n, d)) @ rng.normal(size=(d, d)), rowvar=False)  # noqa: E731
    c1, c2 = {"cholesky-first": (full(300), full(20)), "cholesky-second": (full(20), full(300)), "eigh": (full(20), full(25))}[which]
    expected = np.trace(scipy.linalg.sqrtm(c1 @ c2).real)
    assert M.trace_sqrt_product(c1, c2) == pytest.approx(expected, rel=1e-7)


def test_fid_of_a_set_with_itself_is_zero_and_degenerate_input_is_nan():
    x = np.random.default_rng(4).normal(size=(50, 5))
    assert M.fid(x, x) == pytest.approx(0.0, abs=1e-10)
    with pytest.warns(RuntimeWarning, match="at least 2 samples"):
        assert np.isnan(M.fid(x[:1], x))
    with pytest.raises(InputError, match="real has 5 features per row but fake has 4"):
        M.fid(x, x[:, :4])


def test_float32_features_use_float32_products_within_their_resolution():
    """Float32 features are multiplied in float32 (4,096 rows per product, summed in float64):
    the covariance must stay within float32's resolution of the float64 computation, and FID
    far closer (the errors are random and cancel), at a size with several products and an
    offset mean (centring in float64 is what keeps it accurate)."""
    rng = np.random.default_rng(8)
    a = (rng.normal(size=(9000, 300)) + 5.0).astype(np.float32)
    b = (rng.normal(size=(9000, 300)) * 1.05 + 5.02).astype(np.float32)
    s32, s64 = M.gaussian_stats(a), M.gaussian_stats(a.astype(np.float64))
    assert np.array_equal(s32.mean, s64.mean)
    assert np.abs(s32.cov - s64.cov).max() < 1e-6 * np.abs(s64.cov).max()
    assert M.fid(a, b) == pytest.approx(M.fid(a.astype(np.float64), b.astype(np.float64)), rel=1e-7)


def _jackknife_reference(real, fake, real_group, fake_group, g):
    """The delete-a-group jackknife written out: FID refitted from scratch without each group."""
    reps = np.array([fid_reference(real[real_group != i], fake[fake_group != i]) for i in range(g)])
    return float(np.sqrt((g - 1) / g * ((reps - reps.mean()) ** 2).sum()))


@pytest.mark.parametrize("route", ["data", "statistics"])
def test_fid_jackknife_equals_a_from_scratch_reference_on_both_routes(route):
    rng = np.random.default_rng(11)
    real, fake = rng.normal(size=(300, 12)), rng.normal(size=(240, 12)) * 1.1 + 0.1
    patients = np.repeat(np.arange(100), 3)  # three scans per patient
    r = M.fid_jackknife(real, fake, real_groups=patients, n_groups=10, rng=5, route=route)
    assert r.route == route and r.n_groups == 10 and (r.units_real, r.units_fake) == (100, 240)
    assert r.value == pytest.approx(fid_reference(real, fake), rel=1e-9)
    # Rebuild the same dealing into groups (the same seed, the same order) to check each replicate.
    gen = np.random.default_rng(5)
    a = M.FIDSample(real, patients, n_groups=10, rng=gen)
    b = M.FIDSample(fake, None, n_groups=10, rng=gen)
    # A patient's scans always fall in one group.
    assert all(len(set(a.group[patients == p])) == 1 for p in range(100))
    assert r.se == pytest.approx(_jackknife_reference(real, fake, a.group, b.group, 10), rel=1e-7)
    for i in range(10):
        assert r.replicates[i] == pytest.approx(fid_reference(real[a.group != i], fake[b.group != i]), rel=1e-7)


def test_fid_jackknife_standard_error_matches_the_spread_over_fresh_samples():
    """The slow reference for an interval: FID's spread over many fresh draws of both sets.
    d = 64 at n = 500 is where the bootstrap this replaced overstated it (1.7x here; 1.3x for the
    jackknife, which by Efron–Stein is not below it on average)."""
    rng = np.random.default_rng(0)
    d = 64
    mix = np.eye(d) + 0.3 * rng.normal(size=(d, d)) / np.sqrt(d)
    draw = lambda: (rng.normal(size=(500, d)), rng.normal(size=(500, d)) @ mix + 0.05)  # noqa: E731
    truth = float(np.std([M.fid(*draw()) for _ in range(80)], ddof=1))
    jack = np.mean([M.fid_jackknife(*draw(), rng=i).se for i in range(8)])
    assert 0.85 < jack / truth < 1.6, (jack, truth)


def test_fid_jackknife_deals_unequal_patients_into_balanced_groups():
    """Patients hold different numbers of scans. Dealt at random, groups of very different
    sizes are left out, FID's bias moves with the rows kept, and the standard error counted that
    as spread (1.85x the spread over fresh samples here, averaged over six studies; 1.48x dealt
    largest first). A patient's scans stay in one group either way."""
    rng = np.random.default_rng(3)
    sizes = rng.geometric(0.15, size=100)
    patients = np.repeat(np.arange(100), sizes)
    s = M.FIDSample(rng.normal(size=(len(patients), 4)), patients, n_groups=20, rng=0)
    counts = np.bincount(s.group, minlength=20)
    assert counts.max() - counts.min() <= sizes.max()
    assert all(len(set(s.group[patients == p])) == 1 for p in range(100))
    ratios = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        patients = np.repeat(np.arange(60), rng.geometric(0.1, size=60))
        n = len(patients)
        draw = lambda: (rng.normal(size=(n, 32)), rng.normal(size=(n, 32)) + 0.05)  # noqa: E731
        truth = float(np.std([M.fid(*draw()) for _ in range(60)], ddof=1))
        jack = np.mean([M.fid_jackknife(*draw(), real_groups=patients, fake_groups=patients, rng=i).se for i in range(10)])
        ratios.append(jack / truth)
    assert 0.85 < np.mean(ratios) < 1.65, ratios


def test_fid_jackknife_without_enough_patients_gives_the_value_without_an_interval():
    """One patient, or one patient holding all but one image, leaves nothing to refit when its
    group is left out: the value comes alone, with a warning (it used to stop the audit)."""
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(31, 3)), rng.normal(size=(40, 3))
    for groups in (["p"] * 31, ["a"] + ["b"] * 30):
        with pytest.warns(RuntimeWarning, match="no standard error"):
            r = M.fid_jackknife(real, fake, real_groups=groups)
        assert r.value == pytest.approx(M.fid(real, fake)) and r.se is None and r.n_groups == 0
        assert r.ci_low is None and r.ci_high is None


def test_fid_jackknife_shares_a_sample_and_handles_few_units_and_bad_input():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(200, 6)), rng.normal(size=(150, 6)) + 0.2
    shared = M.FIDSample(real, n_groups=20, rng=1)
    first, second = M.fid_jackknife(shared, fake, rng=2), M.fid_jackknife(shared, fake + 0.3, rng=2)
    assert first.value < second.value and first.n_groups == second.n_groups == 20
    assert M.fid_jackknife(real, fake, n_groups=0).se is None
    few = M.fid_jackknife(real, fake[:7])  # 7 units: 7 groups (a delete-one jackknife)
    assert few.n_groups == 7 and few.se > 0 and few.ci_low <= few.value <= few.ci_high
    # Student's t on the jackknife's 6 degrees of freedom, not the normal 1.96.
    assert few.ci_high - few.value == pytest.approx(2.446912 * few.se, rel=1e-6)
    with pytest.warns(RuntimeWarning, match="at least 2 samples"):
        assert np.isnan(M.fid_jackknife(real[:1], fake).value)
    for kwargs, message in [({"n_groups": 1}, "n_groups must be 0"), ({"route": "fast"}, "route must be")]:
        with pytest.raises(InputError, match=message):
            M.fid_jackknife(real, fake, **kwargs)
    with pytest.raises(InputError, match="3 patient ids for 200 rows"):
        M.fid_jackknife(real, fake, real_groups=["a", "b", "c"])


# ---------------------------------------------------------------------------------------------
# KID
# ---------------------------------------------------------------------------------------------


def test_mmd2_unbiased_equals_a_double_loop():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(9, 3)) + 0.5
    d = 3

    def k(a, b):
        return (a @ b / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(7), 2)) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(9), 2)) / (9 * 8)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(9)) / (7 * 9)
    assert M.mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_subsets_and_both_computation_paths(monkeypatch):
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(80, 4)), rng.normal(size=(60, 4)) + 0.3
    # One subset holding all of both sets is the full-sample estimate.
    full = M.kid(x[:60], y, n_subsets=1, subset_size=60)
    assert full.mean == pytest.approx(M.mmd2_unbiased(x[:60], y), rel=1e-12) and full.std == 0.0
    gram = M.kid(x, y, n_subsets=20, subset_size=30, rng=1)
    assert gram.subset_size == 30 and gram.n_real == 80 and gram.n_fake == 60
    assert M.kid(x, y, n_subsets=5, subset_size=1000).subset_size == 60  # capped at the smaller set
    # The reference: mmd2_unbiased on each subset, drawn as kid() draws them.
    gen = np.random.default_rng(1)
    reference = [M.mmd2_unbiased(x[gen.choice(80, 30, replace=False)], y[gen.choice(60, 30, replace=False)]) for _ in range(20)]
    np.testing.assert_allclose(gram.values, reference, rtol=1e-10)
    monkeypatch.setattr(M, "_KID_BLOCK_MAX", 0)  # force the per-subset products
    np.testing.assert_allclose(M.kid(x, y, n_subsets=20, subset_size=30, rng=1).values, reference, rtol=1e-10)
    # Mixed: a small real set whole, the large fake set and the cross block per subset.
    big = rng.normal(size=(400, 4)) + 0.3
    monkeypatch.setattr(M, "_KID_BLOCK_MAX", 10_000)
    mixed = M.kid(x[:50], big, n_subsets=5, subset_size=30, rng=2)
    gen = np.random.default_rng(2)
    reference = [M.mmd2_unbiased(x[:50][gen.choice(50, 30, replace=False)], big[gen.choice(400, 30, replace=False)]) for _ in range(5)]
    np.testing.assert_allclose(mixed.values, reference, rtol=1e-10)


def test_kid_separates_distributions_and_is_seeded():
    rng = np.random.default_rng(7)
    x, y, z = rng.normal(size=(400, 8)), rng.normal(size=(400, 8)), rng.normal(size=(400, 8)) + 0.5
    same, shifted = M.kid(x, y, n_subsets=50, subset_size=100), M.kid(x, z, n_subsets=50, subset_size=100)
    # Same distribution: the mean of 50 subset estimates is well within one subset's spread of 0.
    assert abs(same.mean) < same.std and shifted.mean > 10 * same.std
    assert M.kid(x, y, rng=3, n_subsets=5, subset_size=50).values.tolist() == M.kid(x, y, rng=3, n_subsets=5, subset_size=50).values.tolist()


# ---------------------------------------------------------------------------------------------
# CAS
# ---------------------------------------------------------------------------------------------


def _labelled(rng: np.random.Generator, n: int, d: int = 10) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, n)
    return rng.normal(size=(n, d)) + 1.5 * y[:, None] * np.eye(d)[0], y


def test_cas_planted_labels_and_shuffled_labels():
    """True labels teach the task (CAS ≈ TRTR); shuffled synthetic labels teach nothing (CAS at
    chance, 0.5 here with balanced classes)."""
    rng = np.random.default_rng(8)
    (sx, sy), (rx, ry), (tx, ty) = _labelled(rng, 600), _labelled(rng, 600), _labelled(rng, 2000)
    good = M.cas(sx, sy, rx, ry, tx, ty, n_bootstrap=300)
    assert good.trtr > 0.7 and good.ratio_ci_low < 1.0 < good.ratio_ci_high
    bad = M.cas(sx, rng.permutation(sy), rx, ry, tx, ty, n_bootstrap=300)
    assert bad.cas_ci_low < 0.5 < bad.cas_ci_high and bad.ratio_ci_high < 0.85
    assert bad.trtr == good.trtr  # the real-trained classifier did not change


def test_cas_from_predictions_by_hand_and_by_patient():
    test_y = ["a", "a", "b", "b", "b", "c"]
    pred_s = ["a", "b", "b", "b", "a", "a"]  # 3/6 right
    pred_r = ["a", "a", "b", "b", "a", "c"]  # 5/6 right
    r = M.cas_from_predictions(test_y, pred_s, pred_r, train_synthetic_y=["a", "b", "b"], train_real_y=["a", "b", "c", "c"], n_bootstrap=0)
    assert (r.cas, r.trtr, r.ratio) == (pytest.approx(0.5), pytest.approx(5 / 6), pytest.approx(0.6))
    assert r.cas_ci_low is None and r.classes == ("a", "b", "c")
    per = {p.label: p for p in r.per_class}
    assert (per["a"].cas, per["b"].cas, per["c"].cas) == (0.5, pytest.approx(2 / 3), 0.0)
    assert (per["c"].n_train_synthetic, per["c"].n_train_real, per["b"].n_test) == (0, 2, 3)
    # By patient: three patients of two images each are the resampled units.
    boot = M.cas_from_predictions(
        test_y, pred_s, pred_r, train_synthetic_y=["a"], train_real_y=["a"],
        groups=["p1", "p1", "p2", "p2", "p3", "p3"], n_bootstrap=500, rng=0,
    )
    assert boot.n_test_groups == 3 and boot.cas_ci_low <= boot.cas <= boot.cas_ci_high


def test_one_class_training_set_predicts_that_class():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(20, 3))
    assert M.fit_predict_linear(x, ["1"] * 20, x[:5]).tolist() == ["1"] * 5


def test_cnn_classifier_learns_an_easy_task_and_is_seeded():
    rng = np.random.default_rng(10)

    def images(n):
        y = rng.integers(0, 2, n)
        img = rng.uniform(0, 0.3, size=(n, 16, 16)).astype(np.float32)
        img[y == 1, 4:12, 4:12] += 0.6  # a bright square in class 1
        return img, y

    (x, y), (t, ty) = images(200), images(100)
    pred = M.fit_predict_cnn(x, y, t, epochs=15, seed=3)
    assert (pred == ty.astype(str)).mean() > 0.9
    assert M.fit_predict_cnn(x, y, t, epochs=15, seed=3).tolist() == pred.tolist()


def test_docstring_examples():
    failures, _ = doctest.testmod(M, optionflags=doctest.ELLIPSIS)
    assert failures == 0


def test_radii_are_recorded_once_as_one_search():
    """The radii's candidate search runs inside them: recorded once, as the whole (``self``
    from 512 dimensions on, FAISS's full search below, as self_knn picks)."""
    from privaudit.search import timed_searches

    rng = np.random.default_rng(0)
    with timed_searches() as found:
        M.knn_radii_sq(rng.normal(size=(300, 600)).astype(np.float32), 5)
        M.knn_radii_sq(rng.normal(size=(300, 16)).astype(np.float32), 5)
    assert [(t.kind, t.n_queries, t.dim, t.k) for t in found] == [("self", 300, 600, 6), ("exact", 300, 16, 6)]
