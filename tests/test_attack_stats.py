"""ROC AUC, TPR at fixed FPR and attacker advantage against slow, obviously correct versions and
hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privaudit.stats import (
    attacker_advantage,
    lowest_resolvable_fpr,
    roc_auc,
    roc_points,
    thin_roc,
    tpr_at_fpr,
    weighted_auc,
)


def slow_auc(pos, neg) -> float:
    """Pair counting: P(member > non-member) + 1/2 P(tie)."""
    total = 0.0
    for p in pos:
        for n in neg:
            total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


def slow_tpr_at_fpr(pos, neg, fpr) -> float:
    """Every threshold "score >= t" for t among the scores and +inf; the best TPR whose FPR is
    at most ``fpr``; NaN when fewer than 3 false positives are allowed."""
    if fpr * len(neg) < 3 - 1e-9:
        return math.nan
    best = 0.0
    for t in sorted(set(pos) | set(neg)) + [math.inf]:
        f = sum(n >= t for n in neg) / len(neg)
        if f <= fpr + 1e-12:
            best = max(best, sum(p >= t for p in pos) / len(pos))
    return best


def slow_advantage(pos, neg) -> float:
    best = 0.0
    for t in sorted(set(pos) | set(neg)) + [math.inf]:
        best = max(best, sum(p >= t for p in pos) / len(pos) - sum(n >= t for n in neg) / len(neg))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_auc_tpr_advantage_match_slow_versions_with_ties(seed):
    rng = np.random.default_rng(seed)
    # Rounded scores: many ties, the case where fast versions go wrong.
    pos = np.round(rng.normal(0.5, 1.0, rng.integers(5, 60)), 1)
    neg = np.round(rng.normal(0.0, 1.0, rng.integers(30, 120)), 1)
    assert roc_auc(pos, neg) == pytest.approx(slow_auc(pos, neg), abs=1e-12)
    assert weighted_auc(pos, neg) == pytest.approx(slow_auc(pos, neg), abs=1e-12)
    for fpr in (0.001, 0.01, 0.05, 0.1, 0.3, 1.0):
        fast, slow = tpr_at_fpr(pos, neg, fpr), slow_tpr_at_fpr(pos, neg, fpr)
        assert (math.isnan(fast) and math.isnan(slow)) or fast == pytest.approx(slow, abs=1e-12), fpr
    assert attacker_advantage(pos, neg) == pytest.approx(slow_advantage(pos, neg), abs=1e-12)


def test_auc_agrees_with_scikit_learn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(7)
    pos, neg = np.round(rng.normal(0.3, 1, 200), 2), np.round(rng.normal(0, 1, 300), 2)
    y = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    assert roc_auc(pos, neg) == pytest.approx(roc_auc_score(y, np.r_[pos, neg]), abs=1e-12)


def test_hand_computed_cases():
    # 2 members x 2 non-members: (3>1) (3>2) (2>1) (2=2 -> 1/2) = 3.5 / 4.
    assert roc_auc(np.array([3.0, 2.0]), np.array([1.0, 2.0])) == 0.875
    assert roc_auc(np.array([1.0]), np.array([1.0])) == 0.5
    assert roc_auc(np.array([0.0, 0.0]), np.array([1.0, 2.0])) == 0.0
    assert math.isnan(roc_auc(np.array([]), np.array([1.0])))
    # 10 non-members 0.0 .. 0.9; FPR 0.3 allows 3 of them (0.7, 0.8, 0.9) above the threshold.
    neg = np.arange(10.0) / 10
    assert tpr_at_fpr(np.array([5.0, 4.0, 0.5]), neg, 0.3) == pytest.approx(2 / 3)
    assert tpr_at_fpr(np.array([5.0, 4.0, 0.95]), neg, 0.3) == 1.0
    # FPR 0.2 with 10 non-members: only 2 false positives allowed, below the 3 needed.
    assert math.isnan(tpr_at_fpr(np.array([5.0]), neg, 0.2))
    # A perfect attack: advantage 1, TPR 1 at every resolvable FPR.
    assert attacker_advantage(np.array([2.0, 3.0]), neg) == 1.0
    assert lowest_resolvable_fpr(300) == 0.01 and lowest_resolvable_fpr(2) == 1.0


def test_unresolvable_rates_are_nan_not_zero():
    """TPR at 0.1 % FPR with 300 non-members cannot be resolved: NaN, even for a perfect attack."""
    neg = np.zeros(300)
    assert math.isnan(tpr_at_fpr(np.ones(10), neg, 0.001))
    assert tpr_at_fpr(np.ones(10), neg, 0.01) == 1.0


def test_roc_points_start_and_end_and_are_monotone():
    rng = np.random.default_rng(3)
    pos, neg = rng.normal(1, 1, 40), rng.normal(0, 1, 50)
    fpr, tpr, thr = roc_points(pos, neg)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and thr[0] == np.inf
    # Trapezoids under the empirical curve give the AUC (ties counted one half).
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(pos, neg), abs=1e-12)
    f, t = thin_roc(fpr, tpr, points=20)
    assert len(f) <= 21 and f[0] == 0.0 and f[-1] == pytest.approx(1.0) and t[-1] == 1.0
    # Thinning keeps the upper envelope: each kept point is the best TPR at its FPR.
    for fi, ti in zip(f, t):
        assert ti == tpr[fpr <= fi + 1e-12].max()


def test_weighted_auc_equals_auc_on_repeated_scores():
    """A bootstrap replicate as weights gives the AUC of the arrays with rows repeated."""
    rng = np.random.default_rng(11)
    pos, neg = np.round(rng.normal(1, 1, 20), 1), np.round(rng.normal(0, 1, 25), 1)
    wp, wn = rng.integers(0, 4, pos.size), rng.integers(0, 4, neg.size)
    assert weighted_auc(pos, neg, wp, wn) == pytest.approx(roc_auc(np.repeat(pos, wp), np.repeat(neg, wn)), abs=1e-12)
