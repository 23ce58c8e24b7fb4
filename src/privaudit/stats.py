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
