"""``copies``: synthetic images that are copies of training images.

For every synthetic image, its most similar training image in the embedding space. Whether that
similarity is suspicious is decided against a **null** of real non-members: the most-similar-
training similarity of each holdout image (patients disjoint from training). A synthetic image is
flagged when its conformal p-value against that null is at most ``alpha``; for a synthetic image
that is no more a copy than a fresh real scan would be, that happens with probability at most
``alpha``.

Exact and near duplicates between training and holdout are taken out of the null first: a
holdout image that duplicates a training image scores like a copy and would hide real copies.
Without a holdout, the null falls back to leave-one-patient-out similarities inside training
(weaker: see :data:`FALLBACK_NOTE`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from privaudit.checks.base import (
    CHECKS,
    AuditContext,
    Check,
    CheckResult,
    CheckStatus,
    Direction,
    Metric,
    MetricSpec,
    Reviewable,
)
from privaudit.errors import ConfigError
from privaudit.search import knn_excluding_self
from privaudit.stats import attainable_level, clopper_pearson, conformal_pvalues, conformal_threshold

FALLBACK_NOTE = (
    "No holdout was given, so the null is built inside the training set: each training image's "
    "similarity to its most similar training image of another patient (leave-one-patient-out). "
    "This is weaker than a real holdout: the null sees one patient fewer than a synthetic image "
    "does, and without patient ids other scans of the same patient enter the null and raise the "
    "threshold, so copies can be missed."
)


@dataclass(frozen=True)
class CopiesOptions:
    """Options of the ``copies`` check.

    Attributes:
        alpha: per-image false-positive level: a synthetic image that is not a copy is flagged
            with probability at most ``alpha``. The null must hold at least ``1/alpha - 1``
            scores for anything to be flaggable.
        near_duplicate_similarity: similarity at or above which a training/holdout pair counts
            as a near-duplicate and leaves the null; ``None`` uses the embedder's own level.
    """

    alpha: float = 0.01
    near_duplicate_similarity: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"copies.alpha must lie in (0, 1); got {self.alpha}")
        nd = self.near_duplicate_similarity
        if nd is not None and not -1.0 <= nd <= 1.0:
            raise ConfigError(f"copies.near_duplicate_similarity must lie in [-1, 1]; got {nd}")


@dataclass(frozen=True)
class FlaggedCopy:
    """A synthetic image flagged as a copy, with its most similar training image."""

    synthetic_id: str
    train_id: str
    train_patient_id: str | None
    similarity: float
    p_value: float


@dataclass(frozen=True)
class DuplicatePair:
    """A null image (holdout, or training in the fallback) that duplicates a training image."""

    image_id: str
    train_id: str
    similarity: float
    exact: bool


@dataclass(frozen=True)
class NullSummary:
    """Where the null came from and what it looks like."""

    source: str
    n: int
    n_duplicates_removed: int
    median: float | None
    q99: float | None
    max: float | None


@dataclass(frozen=True)
class SimilarityHistogram:
    """The synthetic and null similarities binned on shared edges, for the report's chart
    (``privaudit report`` redraws it from ``results.json``). Counts only: no per-image value."""

    edges: tuple[float, ...]
    synthetic: tuple[int, ...]
    null: tuple[int, ...]


#: Bins of :class:`SimilarityHistogram`.
HISTOGRAM_BINS = 40


@dataclass(frozen=True, kw_only=True)
class CopiesResult(CheckResult):
    """Result of the ``copies`` check (see the module docstring)."""

    embedder: str
    alpha: float
    alpha_attainable: float
    threshold: float | None
    n_synthetic: int
    n_flagged: int
    n_above_null_max: int
    n_train_images_copied: int
    n_train_patients_copied: int | None
    null: NullSummary | None
    duplicates_removed: tuple[DuplicatePair, ...]
    flagged: tuple[FlaggedCopy, ...]
    histogram: SimilarityHistogram | None = None


@CHECKS.register("copies")
class CopiesCheck(Check):
    """Flags synthetic images more similar to a training image than real non-members are."""

    name = "copies"
    title = "Copies of training images"
    Options = CopiesOptions
    metrics = {
        "excess_flag_rate": MetricSpec(
            "excess_flag_rate",
            Direction.HIGHER_IS_WORSE,
            "share of synthetic images flagged as copies beyond the share expected by chance "
            "(the attainable alpha); about 0 for a set without copies",
        ),
        "flagged_rate": MetricSpec(
            "flagged_rate",
            Direction.HIGHER_IS_WORSE,
            "share of synthetic images flagged as copies at the per-image level alpha",
        ),
    }

    reviewable = Reviewable(
        field="flagged",
        keys=("synthetic_id", "train_id"),
        decisions={
            "not_a_copy": "a reviewer looked at the pair and judged it a false alarm",
            "accepted": "the pair is a copy (or too close), and its release was accepted",
        },
        score="similarity",
    )

    @classmethod
    def metrics_after_review(cls, result: Mapping[str, Any], decisions: list[str]) -> dict[str, Metric]:
        """Flagged rate and excess after waivers.

        ``accepted`` pairs are copies whose release was accepted: they leave the count. ``not_a_copy``
        pairs are false alarms found by a person: they leave the count too, but they also use up
        the allowance for chance flags (about ``alpha * m`` false alarms are expected, and review
        has explained some of them), so ``excess = (k - a - max(f, alpha * m)) / m`` for ``k``
        flagged, ``a`` accepted and ``f`` not-a-copy pairs among ``m`` synthetic images. Waiving
        false alarms up to the chance level therefore does not lower the excess: they were never
        counted against the set.
        """
        m = int(result["n_synthetic"])
        k = int(result["n_flagged"])
        not_copy = sum(d == "not_a_copy" for d in decisions)
        accepted = sum(d == "accepted" for d in decisions)
        if result["status"] != CheckStatus.ASSESSED.value or m == 0:
            return {name: Metric(None, m, direction=spec.direction) for name, spec in cls.metrics.items()}
        remaining = k - not_copy - accepted
        if remaining < 0:
            raise ValueError(f"{len(decisions)} waivers for {k} flagged pairs")
        alpha_att = float(result["alpha_attainable"])
        # (the first branch keeps the unreviewed figures bit-identical to run()'s)
        allowance = alpha_att if not_copy == 0 else max(0.0, alpha_att * m - not_copy) / m
        lo, hi = clopper_pearson(remaining, m)
        rate = remaining / m
        return {
            "excess_flag_rate": Metric(rate - allowance, m, lo - allowance, hi - allowance),
            "flagged_rate": Metric(rate, m, lo, hi),
        }

    def run(self, ctx: AuditContext, options: CopiesOptions) -> CopiesResult:
        """Build the null, score every synthetic image, flag at ``alpha``."""
        near_dup = (
            options.near_duplicate_similarity
            if options.near_duplicate_similarity is not None
            else ctx.space.near_duplicate_similarity
        )
        warnings: list[str] = []
        if ctx.holdout is not None:
            null_scores, duplicates, source = _holdout_null(ctx, near_dup)
        else:
            null_scores, duplicates, source = _training_null(ctx, near_dup)
            warnings.append(FALLBACK_NOTE)
        if duplicates:
            warnings.append(
                f"{len(duplicates)} {'holdout' if ctx.holdout is not None else 'training'} image(s) "
                f"duplicate a training image (similarity >= {near_dup:g} or identical pixels) and "
                "were left out of the null"
            )

        syn = ctx.neighbors("synthetic", "train", k=1)
        scores = syn.similarities[:, 0].astype(np.float64)
        nearest = syn.indices[:, 0]
        m = len(scores)
        n = int(null_scores.size)
        null = NullSummary(
            source=source,
            n=n,
            n_duplicates_removed=len(duplicates),
            median=float(np.median(null_scores)) if n else None,
            q99=float(np.quantile(null_scores, 0.99)) if n else None,
            max=float(null_scores.max()) if n else None,
        )
        alpha_att = attainable_level(options.alpha, n) if n else 0.0
        common = dict(
            check=self.name,
            embedder=ctx.primary,
            warnings=tuple(warnings),
            alpha=options.alpha,
            alpha_attainable=alpha_att,
            n_synthetic=m,
            null=null,
            duplicates_removed=tuple(duplicates),
            histogram=similarity_histogram(scores, null_scores),
        )
        n_above_max = int((scores > null_scores.max()).sum()) if n else 0
        if alpha_att == 0.0:
            needed = math.ceil(1.0 / options.alpha) - 1
            reason = (
                f"the null holds {n} score(s), so the smallest possible p-value is 1/{n + 1}, "
                f"above alpha = {options.alpha:g}: no image could be flagged. "
                f"At least {needed} non-member images are needed"
            )
            return CopiesResult(
                status=CheckStatus.NOT_ASSESSED,
                reason=reason,
                summary=f"The copy check could not be assessed: {reason}.",
                metrics={name: Metric(None, m, direction=spec.direction) for name, spec in self.metrics.items()},
                threshold=None,
                n_flagged=0,
                n_above_null_max=n_above_max,
                n_train_images_copied=0,
                n_train_patients_copied=None,
                flagged=(),
                **common,
            )

        pvalues = conformal_pvalues(scores, null_scores)
        is_flagged = pvalues <= options.alpha + 1e-12
        flagged_idx = np.flatnonzero(is_flagged)
        flagged_idx = flagged_idx[np.lexsort((-scores[flagged_idx], pvalues[flagged_idx]))]
        train_pids = ctx.train.patient_ids
        flagged = tuple(
            FlaggedCopy(
                synthetic_id=ctx.synthetic.ids[i],
                train_id=ctx.train.ids[nearest[i]],
                train_patient_id=train_pids[nearest[i]] if train_pids else None,
                similarity=float(scores[i]),
                p_value=float(pvalues[i]),
            )
            for i in flagged_idx
        )
        k = len(flagged)
        lo, hi = clopper_pearson(k, m)
        rate = k / m
        copied = {int(nearest[i]) for i in flagged_idx}
        n_patients = len({train_pids[i] for i in copied}) if train_pids else None
        return CopiesResult(
            status=CheckStatus.ASSESSED,
            reason=None,
            summary=_summary(k, m, alpha_att, len(copied), n_patients, source),
            metrics={
                "excess_flag_rate": Metric(rate - alpha_att, m, lo - alpha_att, hi - alpha_att),
                "flagged_rate": Metric(rate, m, lo, hi),
            },
            threshold=conformal_threshold(null_scores, options.alpha),
            n_flagged=k,
            n_above_null_max=n_above_max,
            n_train_images_copied=len(copied),
            n_train_patients_copied=n_patients,
            flagged=flagged,
            **common,
        )


def similarity_histogram(scores: np.ndarray, null_scores: np.ndarray, *, bins: int = HISTOGRAM_BINS) -> SimilarityHistogram | None:
    """Both score sets on ``bins`` shared, equal-width bins spanning all of them."""
    both = np.concatenate([scores, null_scores]) if null_scores.size else scores
    if both.size == 0:
        return None
    lo, hi = float(both.min()), float(both.max())
    if hi - lo < 1e-6:  # all equal: one narrow bin around the value
        lo, hi = lo - 5e-4, hi + 5e-4
    edges = np.linspace(lo, hi, bins + 1)
    syn, _ = np.histogram(scores, bins=edges)
    null, _ = np.histogram(null_scores, bins=edges)
    return SimilarityHistogram(
        edges=tuple(float(e) for e in edges),
        synthetic=tuple(int(c) for c in syn),
        null=tuple(int(c) for c in null),
    )


def _summary(k: int, m: int, alpha_att: float, n_images: int, n_patients: int | None, source: str) -> str:
    against = "real images of patients the generator never saw" if source == "holdout" else "a weaker within-training estimate (no holdout)"
    text = (
        f"{k} of {m} synthetic images ({k / m:.1%}) are more similar to a training image than "
        f"{against} are at the chosen level; about {alpha_att * m:.1f} would be by chance alone."
    )
    if k:
        whose = f" of {n_patients} patient{'s' * (n_patients != 1)}" if n_patients is not None else ""
        text += f" They resemble {n_images} distinct training image{'s' * (n_images != 1)}{whose}."
    return text


def _holdout_null(ctx: AuditContext, near_dup: float) -> tuple[np.ndarray, list[DuplicatePair], str]:
    holdout = ctx.images("holdout")
    nb = ctx.neighbors("holdout", "train", k=1)
    sims = nb.similarities[:, 0].astype(np.float64)
    train_by_digest = {d: i for i, d in enumerate(ctx.train.pixel_digests)}
    duplicates, keep = [], np.ones(len(sims), dtype=bool)
    for i, digest in enumerate(holdout.pixel_digests):
        exact = train_by_digest.get(digest)
        if exact is not None or sims[i] >= near_dup:
            keep[i] = False
            j = exact if exact is not None else int(nb.indices[i, 0])
            duplicates.append(DuplicatePair(holdout.ids[i], ctx.train.ids[j], float(sims[i]), exact is not None))
    return sims[keep], duplicates, "holdout"


def _training_null(ctx: AuditContext, near_dup: float) -> tuple[np.ndarray, list[DuplicatePair], str]:
    train = ctx.train
    groups = None if train.patient_ids is None else np.asarray(train.patient_ids)
    nb = knn_excluding_self(ctx.space.train, k=1, groups=groups)
    sims = nb.similarities[:, 0].astype(np.float64)
    valid = np.isfinite(sims)  # a training set of one patient has no other-patient neighbour
    owners: dict[bytes, list[int]] = {}
    for i, digest in enumerate(train.pixel_digests):
        owners.setdefault(digest, []).append(i)
    duplicates, keep = [], valid.copy()
    for i in np.flatnonzero(valid):
        twins = [j for j in owners[train.pixel_digests[i]] if j != i and (groups is None or groups[j] != groups[i])]
        if twins or sims[i] >= near_dup:
            keep[i] = False
            j = twins[0] if twins else int(nb.indices[i, 0])
            duplicates.append(DuplicatePair(train.ids[i], train.ids[j], float(sims[i]), bool(twins)))
    source = "training_leave_one_patient_out" if groups is not None else "training_leave_one_image_out"
    return sims[keep], duplicates, source
