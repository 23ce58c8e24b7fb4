"""Statistics against slow, obviously correct versions and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privaudit.stats import attainable_level, clopper_pearson, conformal_pvalues, conformal_threshold


def test_conformal_pvalues_match_the_definition():
    rng = np.random.default_rng(0)
    null = np.round(rng.random(57), 2)  # rounded: ties with the scores are exercised
    scores = np.round(rng.random(200), 2)
    slow = [(1 + sum(1 for s in null if s >= x)) / (len(null) + 1) for x in scores]
    np.testing.assert_allclose(conformal_pvalues(scores, null), slow)


def test_conformal_pvalues_are_valid_under_exchangeability():
    # Scores drawn like the null: P(p <= a) <= a (here a = 0.05 over many draws).
    rng = np.random.default_rng(1)
    hits = sum(conformal_pvalues(rng.random(1), rng.random(99))[0] <= 0.05 for _ in range(4000))
    # Exactly floor(0.05 * 100) / 100 = 0.05 in expectation; 4000 draws give sd ~0.0034.
    assert hits / 4000 < 0.05 + 4 * math.sqrt(0.05 * 0.95 / 4000)


@pytest.mark.parametrize("alpha, n", [(0.01, 99), (0.01, 98), (0.05, 300), (0.2, 7), (0.001, 500)])
def test_threshold_agrees_with_pvalues(alpha, n):
    rng = np.random.default_rng(n)
    null = rng.random(n)
    t = conformal_threshold(null, alpha)
    grid = np.concatenate([null, null + 1e-9, null - 1e-9, [-1.0, 2.0]])
    flagged = conformal_pvalues(grid, null) <= alpha + 1e-12
    np.testing.assert_array_equal(flagged, grid > t)
    assert attainable_level(alpha, n) == pytest.approx(math.floor(alpha * (n + 1) + 1e-9) / (n + 1))


def test_too_small_null_cannot_flag():
    assert attainable_level(0.01, 98) == 0.0
    assert conformal_threshold(np.zeros(98), 0.01) == math.inf
    assert attainable_level(0.01, 99) == pytest.approx(0.01)


def test_clopper_pearson_known_values():
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 10))
    lo, hi = clopper_pearson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 10))
    # A textbook value: 5 of 20 -> (0.0866, 0.4910).
    lo, hi = clopper_pearson(5, 20)
    assert (round(lo, 4), round(hi, 4)) == (0.0866, 0.491)
    assert all(math.isnan(v) for v in clopper_pearson(0, 0))
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)


def _slow_bh(p, q):
    """Step-up by the book: try every k from m down to 1."""
    m = len(p)
    ranked = sorted(range(m), key=lambda i: p[i])
    for k in range(m, 0, -1):
        if p[ranked[k - 1]] <= k * q / m:
            return {ranked[i] for i in range(k)}
    return set()


@pytest.mark.parametrize("seed", range(5))
def test_benjamini_hochberg_matches_the_step_up_definition(seed):
    from privaudit.stats import benjamini_hochberg

    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.random(80), rng.random(20) * 0.002])
    p = np.round(p, 3)  # ties are exercised
    for q in (0.01, 0.05, 0.2):
        assert set(np.flatnonzero(benjamini_hochberg(p, q))) == _slow_bh(list(p), q)


def test_bh_floor_is_the_smallest_flaggable_count():
    from privaudit.stats import benjamini_hochberg, bh_detection_floor

    # METHODS.md: m = 10,000, n = 300, q = 0.05 -> fewer than 665 copies are never flagged.
    assert bh_detection_floor(10_000, 300, 0.05) == 665
    for m, n, q in ((200, 160, 0.05), (100, 120, 0.1), (50, 999, 0.05)):
        k = bh_detection_floor(m, n, q)
        best = 1 / (n + 1)
        p = np.full(m, 0.9)
        p[:k] = best
        assert benjamini_hochberg(p, q)[:k].all()
        p[k - 1] = 0.9
        assert not benjamini_hochberg(p, q).any() or k == 1


def test_storey_estimate():
    from privaudit.stats import storey_nonnull_share

    rng = np.random.default_rng(0)
    null = rng.random(100_000)
    assert storey_nonnull_share(null, 0.01) == pytest.approx(0.0, abs=0.01)
    mixed = np.concatenate([rng.random(80_000), np.full(20_000, 1e-6)])
    assert storey_nonnull_share(mixed, 0.01) == pytest.approx(0.2, abs=0.01)
    assert math.isnan(storey_nonnull_share(np.array([]), 0.01))
