"""Statistics the checks rest on. Sources are in ``../shared/METHODS.md`` and the README."""

from __future__ import annotations

import math

import numpy as np


def conformal_pvalues(scores: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Conformal p-values of ``scores`` against null scores (higher score = more extreme).

    ``p = (1 + #{i : null_i >= s}) / (n + 1)``. If a score is exchangeable with the null, its
    p-value is valid: ``P(p <= a) <= a`` (Bates et al., "Testing for outliers with conformal
    p-values", Annals of Statistics 2023). The smallest attainable value is ``1 / (n + 1)``.

    Example:
        >>> conformal_pvalues(np.array([0.5, 2.0]), np.array([0.0, 1.0, 1.0])).tolist()
        [0.75, 0.25]
    """
    null_sorted = np.sort(np.asarray(null, dtype=np.float64))
    n = null_sorted.size
    if n == 0:
        raise ValueError("the null sample is empty")
    scores = np.asarray(scores, dtype=np.float64)
    at_least = n - np.searchsorted(null_sorted, scores, side="left")
    return (1.0 + at_least) / (n + 1.0)


def attainable_level(alpha: float, n_null: int) -> float:
    """The largest conformal p-value threshold ``<= alpha`` a null of ``n_null`` can produce.

    Flagging at ``p <= alpha`` rejects a null-exchangeable score with probability exactly
    ``floor(alpha (n + 1)) / (n + 1)``; 0 means the null is too small to flag anything.
    """
    return math.floor(alpha * (n_null + 1) + 1e-9) / (n_null + 1)


def conformal_threshold(null: np.ndarray, alpha: float) -> float:
    """The score a value must *exceed* for its conformal p-value to be ``<= alpha``.

    Returns ``inf`` when ``alpha < 1 / (n + 1)`` (nothing can be flagged).
    """
    null_sorted = np.sort(np.asarray(null, dtype=np.float64))
    n = null_sorted.size
    allowed = math.floor(alpha * (n + 1) + 1e-9) - 1  # null scores that may be >= s
    if allowed < 0:
        return math.inf
    if allowed >= n:
        return -math.inf
    return float(null_sorted[n - 1 - allowed])


def clopper_pearson(successes: int, trials: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval for a binomial proportion.

    ``lower = Beta.ppf(a/2, x, n-x+1)`` (0 when x = 0), ``upper = Beta.ppf(1-a/2, x+1, n-x)``
    (1 when x = n), with ``a = 1 - confidence``.

    Example:
        >>> lo, hi = clopper_pearson(0, 10)
        >>> lo, round(hi, 4)
        (0.0, 0.3085)
    """
    from scipy.stats import beta

    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials; got {successes} of {trials}")
    if trials == 0:
        return (math.nan, math.nan)
    a = 1.0 - confidence
    lower = 0.0 if successes == 0 else float(beta.ppf(a / 2, successes, trials - successes + 1))
    upper = 1.0 if successes == trials else float(beta.ppf(1 - a / 2, successes + 1, trials - successes))
    return (lower, upper)


def benjamini_hochberg(pvalues: np.ndarray, q: float) -> np.ndarray:
    """Benjamini–Hochberg at level ``q``: a boolean mask of the rejected hypotheses.

    Sort ascending, find the largest k with ``p_(k) <= k q / m``, reject the k smallest. It
    controls the false discovery rate at ``q`` for independent or positively dependent (PRDS)
    p-values, which conformal p-values sharing one null sample are (Bates et al. 2023).

    Example:
        >>> benjamini_hochberg(np.array([0.001, 0.02, 0.04, 0.5]), 0.05).tolist()
        [True, True, False, False]
    """
    p = np.asarray(pvalues, dtype=np.float64)
    m = p.size
    if m == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(p, kind="stable")
    below = p[order] <= q * np.arange(1, m + 1) / m + 1e-12
    reject = np.zeros(m, dtype=bool)
    if below.any():
        k = int(np.flatnonzero(below).max()) + 1
        reject[order[:k]] = True
    return reject


def bh_detection_floor(m: int, n_null: int, q: float, *, multiplicity: int = 1) -> int:
    """The fewest discoveries BH at level ``q`` can make among ``m`` conformal p-values.

    The smallest conformal p-value is ``1 / (n + 1)`` (``S / (n + 1)`` after a Bonferroni
    correction over ``S`` spaces); BH rejects k hypotheses only if ``p_(k) <= k q / m``, so even
    perfect copies are flagged only when there are at least ``ceil(S m / (q (n + 1)))`` of them.
    """
    if m == 0:
        return 0
    return max(1, math.ceil(multiplicity * m / (q * (n_null + 1)) - 1e-9))


def storey_nonnull_share(pvalues: np.ndarray, lam: float) -> float:
    """Storey's estimate of the share of non-null hypotheses, ``1 - pi0``, at threshold ``lam``.

    ``pi0 = #{p > lam} / (m (1 - lam))`` (Storey, JRSS-B 2002), clipped to [0, 1]. With ``lam``
    small this is the share of p-values at or below ``lam`` beyond the ``lam`` expected by
    chance, rescaled: ``(F(lam) - lam) / (1 - lam)``.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.size == 0 or not 0.0 < lam < 1.0:
        return math.nan
    pi0 = float((p > lam + 1e-12).sum()) / (p.size * (1.0 - lam))
    return float(min(1.0, max(0.0, 1.0 - pi0)))


# ---------------------------------------------------------------- attack evaluation (ROC)


def roc_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """ROC AUC of scores where higher means "member": the probability that a random member
    outscores a random non-member, ties counting one half (the Mann–Whitney U statistic over
    ``n_pos * n_neg``). NaN when either side is empty.

    Example:
        >>> roc_auc(np.array([3.0, 2.0]), np.array([1.0, 2.0]))
        0.875
    """
    from scipy.stats import rankdata

    pos = np.asarray(member_scores, dtype=np.float64)
    neg = np.asarray(nonmember_scores, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        return math.nan
    ranks = rankdata(np.concatenate([pos, neg]))  # average ranks: ties count 1/2
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def roc_points(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The empirical ROC curve: ``(fpr, tpr, thresholds)`` for the rule "member when score >=
    threshold", one point per distinct score, starting at ``(0, 0)`` (threshold ``+inf``) and
    ending at ``(1, 1)``."""
    pos = np.asarray(member_scores, dtype=np.float64)
    neg = np.asarray(nonmember_scores, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"need members and non-members; got {pos.size} and {neg.size}")
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    pos_sorted, neg_sorted = np.sort(pos), np.sort(neg)
    tp = pos.size - np.searchsorted(pos_sorted, thresholds, side="left")
    fp = neg.size - np.searchsorted(neg_sorted, thresholds, side="left")
    fpr = np.concatenate([[0.0], fp / neg.size])
    tpr = np.concatenate([[0.0], tp / pos.size])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


#: False positives a target FPR must allow for its TPR to be called resolvable: with fewer,
#: the TPR rests on one or two non-members' scores (about ``3 / n`` is the lowest FPR a sample
#: of ``n`` non-members can resolve).
MIN_FALSE_POSITIVES = 3


def lowest_resolvable_fpr(n_nonmembers: int) -> float:
    """The lowest FPR whose TPR a sample of ``n_nonmembers`` resolves: ``3 / n`` (see
    :data:`MIN_FALSE_POSITIVES`); NaN for an empty sample."""
    if n_nonmembers <= 0:
        return math.nan
    return min(1.0, MIN_FALSE_POSITIVES / n_nonmembers)


def tpr_at_fpr(member_scores: np.ndarray, nonmember_scores: np.ndarray, fpr: float) -> float:
    """The highest true-positive rate of a threshold rule whose empirical false-positive rate is
    at most ``fpr``; NaN when the sample cannot resolve ``fpr`` (fewer than 3 non-members above
    the threshold would be allowed: ``fpr * n < 3``), so that an unresolvable rate is never read
    as 0.

    Example:
        >>> tpr_at_fpr(np.array([5.0, 4.0, 0.5]), np.arange(10.0) / 10, 0.3)
        0.6666666666666666
    """
    neg = np.asarray(nonmember_scores)
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must lie in [0, 1]; got {fpr}")
    if neg.size == 0 or fpr * neg.size < MIN_FALSE_POSITIVES - 1e-9:
        return math.nan
    f, t, _ = roc_points(member_scores, nonmember_scores)
    return float(t[f <= fpr + 1e-12].max())


def attacker_advantage(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """Membership advantage ``max_t (TPR(t) - FPR(t))`` (Yeom et al., CSF 2018): 0 for a
    useless attack, 1 for a perfect one."""
    f, t, _ = roc_points(member_scores, nonmember_scores)
    return float(max(0.0, (t - f).max()))


def thin_roc(fpr: np.ndarray, tpr: np.ndarray, *, points: int = 60) -> tuple[list[float], list[float]]:
    """At most about ``points`` ROC points, spaced evenly in log FPR (so the low-FPR region that
    a log-log chart shows keeps its detail), always keeping the first and last points and the
    upper envelope (the best TPR at each kept FPR)."""
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    if fpr.size <= points:
        return fpr.tolist(), tpr.tolist()
    positive = fpr[fpr > 0]
    lo = positive.min() if positive.size else 1.0
    grid = np.unique(np.concatenate([[0.0], np.geomspace(lo, 1.0, points - 1)]))
    out_f, out_t = [], []
    for g in grid:
        sel = fpr <= g + 1e-12
        out_f.append(float(g))
        out_t.append(float(tpr[sel].max()))
    return out_f, out_t


def weighted_auc(pos: np.ndarray, neg: np.ndarray, pos_weight: np.ndarray | None = None, neg_weight: np.ndarray | None = None) -> float:
    """ROC AUC with a weight per score (ties count one half): ``sum_ij w_i v_j [s_i > t_j] +
    1/2 [s_i = t_j]`` over ``sum w * sum v``. With integer weights it equals :func:`roc_auc` on
    the scores repeated that many times; a bootstrap over patients draws such weights (how many
    times each patient was drawn) instead of copying arrays."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    w = np.ones(pos.size) if pos_weight is None else np.asarray(pos_weight, dtype=np.float64)
    v = np.ones(neg.size) if neg_weight is None else np.asarray(neg_weight, dtype=np.float64)
    total = w.sum() * v.sum()
    if total <= 0:
        return math.nan
    order = np.argsort(neg, kind="stable")
    neg_sorted, v_sorted = neg[order], v[order]
    cum = np.concatenate([[0.0], np.cumsum(v_sorted)])
    below = cum[np.searchsorted(neg_sorted, pos, side="left")]
    at_or_below = cum[np.searchsorted(neg_sorted, pos, side="right")]
    return float((w * (below + 0.5 * (at_or_below - below))).sum() / total)
