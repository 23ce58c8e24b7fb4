"""The one-run empirical ε lower bound (Steinke, Nasr & Jagielski, "Privacy auditing with one
(1) training run", NeurIPS 2023).

Before training, each of ``m`` canary images is included in the training set by an independent
fair coin flip. After training, an attack scores every canary (here: minus its loss under the
trained generator; members tend to fit better), guesses "in" for the highest scores and "out"
for the lowest, and abstains on the rest. If training is (ε, δ)-DP, the number ``v`` of correct
guesses among ``r`` guesses is, up to a δ term, no more likely to be large than a
Binomial(r, e^ε / (1 + e^ε)) draw (their Theorem 3.1 and Algorithm 2). The lower bound is the
largest ε that the observed ``v`` rejects at the chosen confidence.

Two choices keep the bound honest:

* **Selection on one half, bound on the other.** How many guesses to make on each side is
  chosen on a random half of the canaries (the selection half, maximising the bound there);
  the bound is computed once, on the other half, with those guess rates. Choosing them on the
  same canaries would inflate it (METHODS.md). The coin flips of the two halves are
  independent, so the evaluation half is a valid one-run audit on its own with ``m`` = its size.
* **The δ term is kept** (Algorithm 2's ``2 m δ α``), so the bound is of the same (ε, δ) pair the
  accountant reports, at the same unit: one image.

METHODS.md states the bound with Clopper–Pearson intervals for independent trials (Jagielski et
al. 2020); with one training run the trials are not independent, and Steinke et al.'s binomial
argument is what makes one run valid, so that is what is computed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Guess rates tried on the selection half, each side: share of canaries guessed "in" (highest
#: scores) and "out" (lowest scores).
GUESS_RATES = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least ``v`` of ``r`` guesses correct] under (ε, δ)-DP, ``m`` randomised canaries.

    Steinke et al. 2023, Algorithm 2: ``P[Binomial(r, q) >= v] + 2 m δ max_i P[v > B >= v - i] / i``
    with ``q = e^ε / (1 + e^ε)``.

    Example:
        >>> round(p_value(100, 10, 10, 0.0, 0.0), 6)  # ten right out of ten by chance
        0.000977
    """
    from scipy.stats import binom

    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m; got v={v}, r={r}, m={m}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(binom.sf(v - 1, r, q))
    alpha = 0.0
    if delta > 0 and v > 0:
        below = binom.pmf(v - np.arange(1, v + 1), r, q)  # P[B = v - i], i = 1..v
        alpha = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
    return min(1.0, beta + alpha * delta * 2 * m)


def epsilon_lower_bound(m: int, r: int, v: int, *, delta: float, confidence: float = 0.95) -> float:
    """The largest ε whose p-value for ``v`` correct of ``r`` guesses is below ``1 - confidence``
    (0 when even ε = 0 is not rejected). Bisection to 1e-6.

    Example:
        >>> round(epsilon_lower_bound(1000, 100, 100, delta=0.0), 3)  # 100 of 100 right
        3.493
    """
    level = 1.0 - confidence
    if r == 0 or p_value(m, r, v, 0.0, delta) >= level:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < level:
        lo, hi = hi, 2 * hi
        if hi > 1e3:
            return math.inf
    while hi - lo > 1e-6:
        mid = 0.5 * (lo + hi)
        if p_value(m, r, v, mid, delta) < level:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class EmpiricalEpsilon:
    """The one-run audit of one trained generator.

    Attributes:
        epsilon_lb: the ε lower bound at ``confidence`` (per image, at the training δ); 0 when
            the attack does no better than chance.
        confidence: the confidence of the bound (one-sided).
        delta: the δ the bound is for.
        attack: what scored the canaries.
        n_canaries: canaries in all (each included by a fair coin flip).
        n_included: canaries the coin put into training.
        n_selection: canaries of the half that chose the guess rates.
        n_evaluation: canaries of the half the bound is computed on (its ``m``).
        rate_in: share of evaluation canaries guessed "in" (highest scores).
        rate_out: share guessed "out" (lowest scores).
        guesses: guesses made on the evaluation half (``r``).
        correct: correct guesses (``v``).
        member_score_mean: mean attack score of included canaries (all canaries).
        nonmember_score_mean: the same for excluded ones.
    """

    epsilon_lb: float
    confidence: float
    delta: float
    attack: str
    n_canaries: int
    n_included: int
    n_selection: int
    n_evaluation: int
    rate_in: float
    rate_out: float
    guesses: int
    correct: int
    member_score_mean: float
    nonmember_score_mean: float


def _guess(scores: np.ndarray, rate_in: float, rate_out: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices guessed in (top ``rate_in``) and out (bottom ``rate_out``), never overlapping."""
    n = scores.size
    order = np.argsort(-scores, kind="stable")
    k_in = int(math.floor(rate_in * n))
    k_out = min(int(math.floor(rate_out * n)), n - k_in)
    return order[:k_in], order[n - k_out :] if k_out else order[:0]


def _correct(included: np.ndarray, g_in: np.ndarray, g_out: np.ndarray) -> int:
    return int(included[g_in].sum() + (~included[g_out]).sum())


def one_run_audit(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    rng: np.random.Generator,
    confidence: float = 0.95,
    attack: str = "loss threshold",
) -> EmpiricalEpsilon:
    """Audit from canary ``scores`` (higher = more likely a member) and the coin flips.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> inc = rng.random(400) < 0.5
        >>> perfect = one_run_audit(inc.astype(float), inc, delta=0.0, rng=rng)
        >>> perfect.epsilon_lb > 1.5
        True
    """
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    if scores.shape != included.shape or scores.ndim != 1:
        raise ValueError(f"scores and included must be 1-D of one length; got {scores.shape} and {included.shape}")
    m = scores.size
    perm = rng.permutation(m)
    sel, ev = perm[: m // 2], perm[m // 2 :]
    best = (-1.0, 0.0, 0.0)
    for rate_in in GUESS_RATES:
        for rate_out in GUESS_RATES:
            if rate_in + rate_out == 0 or rate_in + rate_out > 1:
                continue
            g_in, g_out = _guess(scores[sel], rate_in, rate_out)
            r = g_in.size + g_out.size
            v = _correct(included[sel], g_in, g_out)
            eps = epsilon_lower_bound(sel.size, r, v, delta=delta, confidence=confidence) if r else 0.0
            # ties: the fewer guesses (a smaller, more conservative attack)
            if eps > best[0] + 1e-12:
                best = (eps, rate_in, rate_out)
    _, rate_in, rate_out = best
    if best[0] <= 0:
        # No rate pair beats chance on the selection half: guess the top and bottom 10 %
        # (a fixed default chosen before seeing the evaluation half).
        rate_in, rate_out = 0.1, 0.1
    g_in, g_out = _guess(scores[ev], rate_in, rate_out)
    r = g_in.size + g_out.size
    v = _correct(included[ev], g_in, g_out)
    eps_lb = epsilon_lower_bound(ev.size, r, v, delta=delta, confidence=confidence) if r else 0.0
    mem = scores[included]
    non = scores[~included]
    return EmpiricalEpsilon(
        epsilon_lb=float(eps_lb),
        confidence=confidence,
        delta=float(delta),
        attack=attack,
        n_canaries=int(m),
        n_included=int(included.sum()),
        n_selection=int(sel.size),
        n_evaluation=int(ev.size),
        rate_in=float(rate_in),
        rate_out=float(rate_out),
        guesses=int(r),
        correct=int(v),
        member_score_mean=float(mem.mean()) if mem.size else math.nan,
        nonmember_score_mean=float(non.mean()) if non.size else math.nan,
    )
