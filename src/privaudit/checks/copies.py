"""``copies``: synthetic images that are copies of training images.

**Score.** For every synthetic image, its most similar training image in each embedding space.
By default the score is *relative to the population*: the log of the ratio of two cosine
distances, ``log((1 - s_ref) / (1 - s_train))``, where ``s_train`` is the similarity to the
nearest training image and ``s_ref`` to the nearest real non-member (a holdout image) -- the
ratio form of the calibrated attacks (GAN-Leaks "cal", Chen et al. CCS 2020; DOMIAS's density
ratio, van Breugel et al. AISTATS 2023). Generator output is often smoother or shifted compared
with real scans; such a shift scales both distances alike and cancels, where a raw similarity
would be flagged by it (measured: a blurred clean set is flagged at 2.5x the nominal rate by the
raw score, at or under it by the ratio). The ratio keeps the raw score's power for exact copies
(distance 0), where a difference of similarities loses it on small, heterogeneous holdouts
(measured on the COVID-19 collection: exact copies found 100 % by the ratio, 89 % by the
difference, at 1 % FPR).

**Null.** The same score for real non-members: each holdout image against training, and against
the holdout images of *other* patients (leave-one-patient-out, so a patient's other scans cannot
serve as its own reference). Exact and near duplicates between training and holdout leave the
null first: they score like copies and would hide real ones. Without a holdout, a weaker
within-training null is used and said so (:data:`FALLBACK_NOTE`).

**Calls.** A conformal p-value per synthetic image and space (Bates et al., Annals of Statistics
2023); several spaces are combined by the smallest per-space p-value, itself calibrated against
the same statistic of the null images (:func:`combined_pvalues`: no Bonferroni factor, so the
resolution stays ``1 / (n + 1)``). The aligned comparison joins as one more component, weighted
``aligned_weight`` (2/3) against the embedding spaces' 1/3 (weighted min-p: each p-value divided
by its weight), which keeps ``pixels``' power on untransformed copies and gives transformed ones
the larger share (measured: README, the copies check). Images are flagged under
Benjamini–Hochberg at FDR ``q`` (or, on request, at a plain per-image level). The detection floor — the fewest copies BH can flag at
all with this null, ``ceil(m / (q (n+1)))`` — is reported, and the flagged rate carries it so that a policy can refuse to pass a check that
could not have seen a rate above its tolerance.

**Estimate.** Separately from what was flagged, the copied share is estimated with Storey's
estimator at ``lambda = alpha`` (the share of p-values at or below ``alpha`` beyond the share
expected by chance, rescaled), with a 95 % interval by bootstrap over holdout patients and
synthetic images.

**Positive control.** Copies of randomly chosen training images, under each transform family of
:mod:`privaudit.transforms`, are planted into a copy of the synthetic set and pass through the
same procedure; the share found is the sensitivity measured on this very dataset. They are then
discarded.

**Search.** The synthetic images' search against training is exact below
``approximate_from`` training images and approximate (IVF, re-ranked exactly) from there on
(:mod:`privaudit.search`); its agreement with exact search on the high-similarity tail is
measured in every audit (a seeded sample plus every image it put in the tail, re-searched
exactly) and reported, with a warning when it missed any. Searches against the holdout are
always exact, so an approximate index can miss copies but never invent them.

**Explanations** (pixel SSIM and the likely transform) for flagged pairs, and **duplicates inside
the inputs** (within training: memorisation is likelier and naive rates inflate; within the
synthetic set: a mode-collapse signal), reported separately from copies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import numpy as np

from privaudit import transforms
from privaudit.align import AlignedImages, AlignOptions, as_role, match, prepare
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
from privaudit.embed.base import select
from privaudit.errors import ConfigError
from privaudit.search import APPROXIMATE_FROM, INDEX_KINDS, Neighbors, SearchIndex, knn, knn_excluding_self, resolve_index
from privaudit.stats import (
    attainable_level,
    benjamini_hochberg,
    bh_detection_floor,
    clopper_pearson,
    conformal_pvalues,
    conformal_threshold,
    storey_nonnull_share,
)

FALLBACK_NOTE = (
    "No holdout was given, so the null is built inside the training set: each training image's "
    "similarity to its most similar training image of another patient (leave-one-patient-out), "
    "and scores are raw similarities (there is no real non-member to score against). This is "
    "weaker than a real holdout: the null sees one patient fewer than a synthetic image does, "
    "and without patient ids other scans of the same patient enter the null and raise the "
    "threshold, so copies can be missed."
)

#: Pairs explained and examples of duplicates listed (all flagged pairs are always listed).
MAX_EXAMPLES = 20

#: Two similarities closer than this are the same pair found (float32 products computed by
#: different kernels differ by a few ulps).
_SAME_SIMILARITY = 1e-5


@dataclass(frozen=True)
class CopiesOptions:
    """Options of the ``copies`` check.

    Attributes:
        fdr: the false discovery rate ``q`` at which copies are flagged (Benjamini–Hochberg).
        method: ``"fdr"`` (flag under BH at ``fdr``) or ``"per_image"`` (flag every image with
            p <= ``alpha``: each non-copy is flagged with probability at most ``alpha``, but
            among many images some will be).
        alpha: the per-image level, and the threshold ``lambda`` of the copied-share estimate.
            The null must hold at least ``1/alpha - 1`` scores.
        score: ``"ratio"`` (log of the distance to real non-members over the distance to
            training), ``"relative"`` (similarity to training minus similarity to real
            non-members) or ``"raw"`` (similarity to training).
        near_duplicate_similarity: similarity at or above which two images count as
            near-duplicates (null clean-up, duplicates inside the inputs); ``None`` uses each
            embedder's own level.
        embedders: the spaces to run in; ``None`` uses every embedder of the audit, plus
            ``unaligned_embedders`` where a set is too large for the aligned comparison.
        unaligned_embedders: spaces added (when ``embedders`` is ``None``) where the aligned
            comparison is left out because a set is above ``align_max``: without it, the
            copy-detection descriptor is what sees past a mirror, a crop or a rotation. Where
            the aligned comparison runs it finds every family the descriptor finds, and more
            (README, "Embedders"), so the descriptor is not fitted then. With ``align = false``
            nothing is added: the spaces are the ones the audit names.
        positive_control: copies planted for the sensitivity control (0 turns it off).
        control_prevalence: the share of the set the control imagines copies of each kind to
            make up (or the detection floor, if larger): each planted copy is judged as one of
            that many copies like it. 5 % is the default policy's fail level for the copied
            share: "a set with that many copies of this kind would be flagged".
        bootstrap: replicates for the interval of the copied-share estimate.
        explain: flagged pairs explained with SSIM and a likely transform (the most
            significant first).
        index: the search index against training: ``"auto"`` (exact below
            ``approximate_from`` training images, approximate IVF from there on), ``"exact"``
            or ``"ivf"``. An approximate search's agreement with exact search on the
            high-similarity tail is measured and reported (:class:`SearchAgreement`).
        approximate_from: the training-set size from which ``"auto"`` is approximate.
        agreement_sample: synthetic images re-searched exactly, at random, to
            measure an approximate index's agreement (all of them when there are fewer); every
            image the approximate search puts in the tail is re-searched too.
        align: add the aligned-correlation component (:mod:`privaudit.align`): each image is
            matched to its candidate training images after undoing a mirror, a rotation of up
            to about 10 degrees, a crop of down to 80 % of the side and any shift, and scored
            like a space. It finds the geometric copies the embedding spaces miss.
        align_max: the largest set (training, synthetic or null) the aligned component runs
            on; above it the component is left out, with a warning (its cost grows with the
            synthetic and null images, each aligned with 10 candidates in two base sets:
            measured 119 s for the copies check of a 10,000 x 10,000 x 2,000 study on 2 cores,
            against 6-8 s without it).
        aligned_weight: where the aligned comparison runs, its weight in the weighted min-p
            combination, the embedding spaces sharing the rest equally (with one space, 2/3
            against 1/3: a copy seen only in the aligned comparison needs half the evidence of
            one seen only in ``pixels``). 1 scores by the aligned comparison alone (its
            templates include the unchanged image); 1/(number of spaces + 1) is plain min-p.
            The p-values are valid whatever the weight; it moves power between transformed
            and untransformed copies (README, the copies check, gives the measurements).
    """

    fdr: float = 0.05
    method: Literal["fdr", "per_image"] = "fdr"
    alpha: float = 0.01
    score: Literal["ratio", "relative", "raw"] = "ratio"
    near_duplicate_similarity: float | None = None
    embedders: tuple[str, ...] | None = None
    unaligned_embedders: tuple[str, ...] = ("copydetect",)
    positive_control: int = 48
    control_prevalence: float = 0.05
    bootstrap: int = 200
    explain: int = 200
    index: Literal["auto", "exact", "ivf"] = "auto"
    approximate_from: int = APPROXIMATE_FROM
    agreement_sample: int = 2000
    align: bool = True
    align_max: int = 20_000
    aligned_weight: float = 2 / 3

    def __post_init__(self) -> None:
        if self.index not in INDEX_KINDS:
            raise ConfigError(f"copies.index must be one of {', '.join(INDEX_KINDS)}; got {self.index!r}")
        if self.approximate_from < 1:
            raise ConfigError(f"copies.approximate_from must be >= 1; got {self.approximate_from}")
        if self.agreement_sample < 1:
            raise ConfigError(f"copies.agreement_sample must be >= 1; got {self.agreement_sample}")
        for name in ("fdr", "alpha", "control_prevalence"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ConfigError(f"copies.{name} must lie in (0, 1); got {value}")
        nd = self.near_duplicate_similarity
        if nd is not None and not -1.0 <= nd <= 1.0:
            raise ConfigError(f"copies.near_duplicate_similarity must lie in [-1, 1]; got {nd}")
        if not 0.0 < self.aligned_weight <= 1.0:
            raise ConfigError(f"copies.aligned_weight must lie in (0, 1]; got {self.aligned_weight}")
        if self.align_max < 1:
            raise ConfigError(f"copies.align_max must be >= 1; got {self.align_max}")
        for name in ("positive_control", "bootstrap", "explain"):
            if getattr(self, name) < 0:
                raise ConfigError(f"copies.{name} must be >= 0; got {getattr(self, name)}")
        if self.embedders is not None and not self.embedders:
            raise ConfigError("copies.embedders is empty; leave it out to use every embedder of the audit")


@dataclass(frozen=True)
class SpaceEvidence:
    """What one embedding space says about a flagged pair."""

    embedder: str
    train_id: str
    similarity: float
    score: float
    p_value: float


@dataclass(frozen=True)
class FlaggedCopy:
    """A synthetic image flagged as a copy, with its most similar training image.

    ``similarity``, ``train_id`` and ``train_patient_id`` are those of the space with the
    strongest evidence (smallest p-value);
    ``p_value`` combines the spaces; ``q_value`` is the BH-adjusted p-value (the smallest FDR
    at which the image would be flagged); ``evidence`` gives each space's view.
    """

    synthetic_id: str
    train_id: str
    train_patient_id: str | None
    similarity: float
    p_value: float
    q_value: float
    evidence: tuple[SpaceEvidence, ...]
    ssim: float | None
    likely_transform: str | None


@dataclass(frozen=True)
class DuplicatePair:
    """Two images that duplicate each other (exactly: identical decoded pixels; or nearly)."""

    image_id: str
    train_id: str
    similarity: float
    exact: bool


@dataclass(frozen=True)
class NullSummary:
    """Where the null came from and what it looks like (in the primary space)."""

    source: str
    score: str
    n: int
    n_patients: int | None
    n_duplicates_removed: int
    median: float | None
    q99: float | None
    max: float | None


@dataclass(frozen=True)
class SimilarityHistogram:
    """The synthetic and null scores of the primary space binned on shared edges, for the
    report's chart. Counts only: no per-image value."""

    edges: tuple[float, ...]
    synthetic: tuple[int, ...]
    null: tuple[int, ...]


#: Bins of :class:`SimilarityHistogram`.
HISTOGRAM_BINS = 40


@dataclass(frozen=True)
class FamilyControl:
    """Positive-control copies of one transform family, and how many were found."""

    family: str
    planted: int
    found: int
    linked: int


@dataclass(frozen=True)
class PositiveControl:
    """Copies planted into a copy of the synthetic set, run through the same procedure."""

    n_planted: int
    n_found: int
    sensitivity: float
    families: tuple[FamilyControl, ...]


@dataclass(frozen=True)
class InternalDuplicates:
    """Duplicates inside one input set (``role``), in the primary space."""

    role: str
    n_images_involved: int
    n_exact_pairs: int
    n_near_pairs: int
    examples: tuple[DuplicatePair, ...]


@dataclass(frozen=True)
class SearchAgreement:
    """How well an approximate search agreed with exact search, in one embedding space.

    The tail is the scores at or above ``tail_score``: the lower of the score an image must
    exceed to be flagged on this space's evidence alone and the highest null score (above which
    images are listed regardless). Exact search was run on ``n_sampled`` synthetic images drawn
    at random and on the ``n_tail_checked`` images that the approximate search put in the tail.
    Among those, exact search put ``n_exact_tail`` in the tail, and the approximate search found
    ``n_found`` of them (the same most similar training image, so the same score); it put
    ``n_spurious`` in the tail that exact search does not. Images outside the sample that the
    approximate search scored below the tail are not re-checked: ``sampled_top1_agreement``
    (the share of sampled images whose most similar training image it found) says how often it
    misses one at all. (The null's searches are always exact.)
    """

    embedder: str
    tail_score: float | None
    n_sampled: int
    n_tail_checked: int
    n_exact_tail: int
    n_found: int
    n_spurious: int
    sampled_top1_agreement: float | None

    @property
    def complete(self) -> bool:
        """True when every tail pair exact search found was found, and nothing spurious."""
        return self.n_found == self.n_exact_tail and self.n_spurious == 0


@dataclass(frozen=True)
class SearchRecord:
    """The index the synthetic images' search against training used, and, when approximate,
    its measured agreement with exact search. Every search against the holdout (the null's,
    the reference's) is exact whatever the index: a missed neighbour there would lower a null
    score or a reference similarity and make false flags; a missed training neighbour can only
    lower a synthetic image's score (a missed copy), and that is what the agreement measures."""

    index: str
    requested: str
    n_base: int
    approximate_from: int
    nlist: int | None
    nprobe: int | None
    train_points: int | None
    kmeans_iterations: int | None
    agreement: tuple[SearchAgreement, ...]


@dataclass(frozen=True)
class AlignedRecord:
    """The aligned-correlation component (:mod:`privaudit.align`): whether it ran, and how.

    Attributes:
        used: True when its scores joined the combination (as the space ``aligned``).
        reason: why it did not run (``None`` when it did).
        candidates: candidate images retrieved per image and base set.
        size: side in px at which images were aligned.
        angles: rotations undone, in degrees.
        crops: crop factors undone.
        smooth: the Gaussian blur (standard deviation in px at ``size``) applied before matching.
        aspect: the largest difference between a template's vertical and horizontal crop
            factors (0: square templates only).
        core: the central share of the query compared where no crop is undone.
        crop_core: the share of the query compared where a crop is undone.
        weight: its weight in the combination (``copies.aligned_weight``; the embedding
            spaces shared the rest equally), None where it did not run. At 1 the spaces were
            not combined; they still gave the null, the duplicates and their evidence.
    """

    used: bool
    reason: str | None
    candidates: int
    size: int
    angles: tuple[float, ...]
    crops: tuple[float, ...]
    smooth: float = 0.0
    aspect: float = 0.0
    core: float | None = None
    crop_core: float | None = None
    weight: float | None = None


@dataclass(frozen=True, kw_only=True)
class CopiesResult(CheckResult):
    """Result of the ``copies`` check (see the module docstring)."""

    embedders: tuple[str, ...]
    method: str
    fdr: float
    alpha: float
    alpha_attainable: float
    score: str
    threshold: float | None
    n_synthetic: int
    n_flagged: int
    detection_floor: int | None
    n_above_null_max: int
    above_null_max_ids: tuple[str, ...]
    n_train_images_copied: int
    n_train_patients_copied: int | None
    null: NullSummary | None
    duplicates_removed: tuple[DuplicatePair, ...]
    within_training: InternalDuplicates | None
    within_synthetic: InternalDuplicates | None
    positive_control: PositiveControl | None
    flagged: tuple[FlaggedCopy, ...]
    histogram: SimilarityHistogram | None = None
    search: SearchRecord | None = None
    aligned: AlignedRecord | None = None


@dataclass
class _Space:
    """One space's scores: synthetic (m) and null (n), and what is needed to score more."""

    spec: str
    syn_similarity: np.ndarray
    syn_nearest: np.ndarray
    syn_score: np.ndarray
    null_score: np.ndarray
    null_group: np.ndarray
    duplicates: list[DuplicatePair]
    source: str
    score: str
    train: np.ndarray
    reference: np.ndarray | None
    kind: str
    index: SearchIndex | None = None
    syn_reference: np.ndarray | None = None
    #: The null images: rows of the holdout (source "holdout") or of training (the fallback).
    null_rows: np.ndarray | None = None

    def score_images(self, ctx: AuditContext, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(similarity, nearest training index, score) of extra images (the positive control)."""
        return self.score_extra(ctx.space_of(self.spec).embed(images))

    def score_extra(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(similarity, nearest training index, score) of extra images in this space."""
        nb = self.index.search(vectors, k=1) if self.index is not None else knn(vectors, self.train, k=1)
        sim = nb.similarities[:, 0].astype(np.float64)
        if self.reference is not None:
            ref = knn(vectors, self.reference, k=1).similarities[:, 0].astype(np.float64)
            return sim, nb.indices[:, 0], score_against(sim, ref, self.kind)
        return sim, nb.indices[:, 0], sim


@CHECKS.register("copies")
class CopiesCheck(Check):
    """Flags synthetic images more similar to a training image than real non-members are."""

    name = "copies"
    title = "Copies of training images"
    Options = CopiesOptions
    metrics = {
        "copy_rate": MetricSpec(
            "copy_rate",
            Direction.HIGHER_IS_WORSE,
            "estimated share of synthetic images that are copies of training images (Storey's "
            "estimator at lambda = alpha; 95 % bootstrap interval over holdout patients and synthetic images)",
        ),
        "flagged_rate": MetricSpec(
            "flagged_rate",
            Direction.HIGHER_IS_WORSE,
            "share of synthetic images flagged as copies (at FDR q, or at the per-image level); its "
            "floor is the smallest non-zero share the null lets the method flag",
        ),
        "control_sensitivity_score": MetricSpec(
            "control_sensitivity_score",
            Direction.HIGHER_IS_BETTER,
            "share of planted positive-control copies that the same procedure flagged on this dataset",
        ),
        "synthetic_duplicate_rate": MetricSpec(
            "synthetic_duplicate_rate",
            Direction.HIGHER_IS_WORSE,
            "share of synthetic images with an exact or near duplicate elsewhere in the synthetic set "
            "(a mode-collapse signal, not a privacy leak by itself)",
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

    def spaces(self, options: CopiesOptions, configured: tuple[str, ...]) -> tuple[str, ...]:
        """Every space the check may use: ``copies.embedders``, or the audit's spaces and the
        ``unaligned_embedders`` (:meth:`spaces_for` says which it uses for given inputs)."""
        if options.embedders:
            return options.embedders
        return configured + tuple(s for s in options.unaligned_embedders if s not in configured)

    def spaces_for(self, options: CopiesOptions, configured: tuple[str, ...], sizes: Mapping[str, int]) -> tuple[str, ...]:
        """The spaces for inputs of these ``sizes``: ``copies.embedders``, or the audit's
        spaces, with the ``unaligned_embedders`` where a set is too large for the aligned
        comparison. The null's size is taken as the holdout's (the training set's without one):
        an upper bound, as duplicates of training images leave the null."""
        if options.embedders:
            return options.embedders
        too_large = options.align and _above_align_max(options, sizes["train"], sizes["synthetic"], sizes.get("holdout", sizes["train"])) is not None
        return self.spaces(options, configured) if too_large else configured

    @classmethod
    def metrics_after_review(cls, result: Mapping[str, Any], decisions: list[tuple[str, Mapping[str, Any]]]) -> dict[str, Metric]:
        """Flagged rate and copy rate after waivers.

        ``accepted`` pairs are copies whose release was accepted: they leave both counts.
        ``not_a_copy`` pairs are false alarms found by a person: they leave the flagged count,
        and in the copy-rate estimate they use up the allowance for chance (about
        ``lambda * m`` p-values fall at or below ``lambda`` by chance, and review explained some
        of them), so the estimate becomes ``(c - a - max(f, lambda m)) / ((1 - lambda) m)`` for
        ``c`` p-values at or below ``lambda``, ``a`` accepted and ``f`` not-a-copy pairs among
        ``m`` images, clipped at 0. Waiving false alarms up to the chance level therefore does
        not lower the estimate: they were never counted against the set. Only pairs whose
        p-value is at or below ``lambda`` were counted in ``c``, so only they count in ``a`` and
        ``f`` (BH can flag pairs above ``lambda`` when many images are flagged).
        """
        metrics = {name: Metric(**{k: v for k, v in value.items() if k in Metric.__dataclass_fields__}) for name, value in result["metrics"].items()}
        m = int(result["n_synthetic"])
        k = int(result["n_flagged"])
        if result["status"] != CheckStatus.ASSESSED.value or m == 0:
            return metrics
        lam = float(result["alpha_attainable"])

        def count(decision: str, *, below_lambda: bool) -> int:
            return sum(d == decision and (not below_lambda or float(item["p_value"]) <= lam + 1e-12) for d, item in decisions)

        not_copy, accepted = count("not_a_copy", below_lambda=False), count("accepted", below_lambda=False)
        remaining = k - not_copy - accepted
        if remaining < 0:
            raise ValueError(f"{len(decisions)} waivers for {k} flagged pairs")
        if not_copy == 0 and accepted == 0:
            return metrics
        fr = metrics["flagged_rate"]
        lo, hi = clopper_pearson(remaining, m)
        metrics["flagged_rate"] = Metric(remaining / m, m, lo, hi, floor=fr.floor)
        cr = metrics["copy_rate"]
        if cr.assessed:
            f_lam, a_lam = count("not_a_copy", below_lambda=True), count("accepted", below_lambda=True)
            below = cr.value * (1 - lam) * m + lam * m  # p-values at or below lambda, back out
            after = max(0.0, below - a_lam - max(f_lam, lam * m)) / ((1 - lam) * m)
            shift = after - float(cr.value)
            metrics["copy_rate"] = Metric(
                after,
                m,
                None if cr.ci_low is None else max(0.0, cr.ci_low + shift),
                None if cr.ci_high is None else max(0.0, cr.ci_high + shift),
            )
        return metrics

    def run(self, ctx: AuditContext, options: CopiesOptions) -> CopiesResult:
        """Score in every space, combine, flag, estimate, control, explain."""
        sizes = {"train": len(ctx.train), "synthetic": len(ctx.synthetic)}
        if ctx.holdout is not None:
            sizes["holdout"] = len(ctx.holdout)
        specs = self.spaces_for(options, ctx.configured, sizes)
        warnings: list[str] = []
        spaces = _score_spaces(ctx, specs, options, warnings)
        aligned_space, aligned = _aligned_space(ctx, spaces[0], options, warnings)
        if aligned_space is not None:
            spaces.append(aligned_space)
        # The components whose p-values are combined, and their weights: every space and the
        # aligned comparison (weighted), the aligned comparison alone at weight 1, or the spaces
        # alike where it does not run.
        scoring, weights = _scoring(spaces, aligned)
        primary = spaces[0]
        if primary.source != "holdout":
            warnings.insert(0, FALLBACK_NOTE)
        n_dups = len(primary.duplicates)
        if n_dups:
            warnings.append(
                f"{n_dups} {'holdout' if primary.source == 'holdout' else 'training'} image(s) duplicate a "
                "training image (identical pixels or a near-duplicate) and were left out of the null"
            )
        m = len(primary.syn_score)
        n_min = len(primary.null_score)
        lam = attainable_level(options.alpha, n_min) if n_min else 0.0
        # An empty null (every non-member duplicates a training image) has no p-values: the check
        # is then not assessed below, with the reason.
        pvalues = _combined(scoring, weights=weights) if n_min else np.ones(m)
        within_train = _internal_duplicates(ctx, "train", spaces[0].spec, options)
        within_syn = _internal_duplicates(ctx, "synthetic", spaces[0].spec, options)
        dup_rate = within_syn.n_images_involved / m if m else math.nan
        dlo, dhi = clopper_pearson(within_syn.n_images_involved, m) if m else (math.nan, math.nan)
        null_scores = primary.null_score
        n = len(null_scores)
        null = NullSummary(
            source=primary.source,
            score=primary.score,
            n=n,
            n_patients=len(set(primary.null_group.tolist())) if n and ctx.holdout is not None and ctx.holdout.patient_ids else None,
            n_duplicates_removed=n_dups,
            median=float(np.median(null_scores)) if n else None,
            q99=float(np.quantile(null_scores, 0.99)) if n else None,
            max=float(null_scores.max()) if n else None,
        )
        above = np.zeros(m, dtype=bool)
        for s in spaces:
            if len(s.null_score):
                above |= s.syn_score > s.null_score.max()
        common = dict(
            check=self.name,
            embedders=tuple(specs),
            method=options.method,
            fdr=options.fdr,
            alpha=options.alpha,
            alpha_attainable=lam,
            score=primary.score,
            n_synthetic=m,
            null=null,
            duplicates_removed=tuple(primary.duplicates),
            within_training=within_train,
            within_synthetic=within_syn,
            n_above_null_max=int(above.sum()),
            above_null_max_ids=tuple(ctx.synthetic.ids[i] for i in np.flatnonzero(above)),
            histogram=similarity_histogram(primary.syn_score, null_scores),
            aligned=aligned,
        )
        dup_metric = Metric(dup_rate, m, dlo, dhi)
        if lam == 0.0:
            needed = math.ceil(1 / options.alpha) - 1
            reason = (
                f"the null holds {n_min} score(s), so the smallest possible p-value is 1/{n_min + 1}, "
                f"above alpha = {options.alpha:g} (the per-image level and the threshold of the copied-share "
                f"estimate): neither flags nor the copied share can be computed. At least {needed} "
                "non-member images are needed"
            )
            metrics = {name: Metric(None, m, direction=spec.direction) for name, spec in self.metrics.items()}
            metrics["synthetic_duplicate_rate"] = dup_metric
            search = _search_record(ctx, spaces, options, None, warnings)
            return CopiesResult(
                status=CheckStatus.NOT_ASSESSED,
                reason=reason,
                summary=f"The copy check could not be assessed: {reason}.",
                warnings=tuple(warnings),
                metrics=metrics,
                threshold=None,
                n_flagged=0,
                detection_floor=None,
                n_train_images_copied=0,
                n_train_patients_copied=None,
                positive_control=None,
                flagged=(),
                search=search,
                **common,
            )

        if options.method == "fdr":
            is_flagged = benjamini_hochberg(pvalues, options.fdr)
            floor = bh_detection_floor(m, n_min, options.fdr)
            cut = float(pvalues[is_flagged].max()) if is_flagged.any() else options.fdr / m
        else:
            is_flagged = pvalues <= lam + 1e-12
            floor = 1
            cut = lam
        qvalues = _bh_adjusted(pvalues)
        rng = ctx.rng("copies")
        copy_rate = storey_nonnull_share(pvalues, lam)
        cr_lo, cr_hi = _bootstrap_storey(scoring, options.alpha, options.bootstrap, rng, weights)
        flagged_idx = np.flatnonzero(is_flagged)
        flagged_idx = flagged_idx[np.lexsort((-primary.syn_similarity[flagged_idx], pvalues[flagged_idx]))]
        flagged = _flagged_pairs(ctx, spaces, flagged_idx, pvalues, qvalues, options.explain)
        k = len(flagged)
        fl_lo, fl_hi = clopper_pearson(k, m)
        train_pids = ctx.train.patient_ids
        copied = {ctx.train.index_of(f.train_id) for f in flagged}
        n_patients = len({train_pids[i] for i in copied}) if train_pids else None
        control = _positive_control(ctx, scoring, pvalues, options, rng, weights) if options.positive_control else None
        metrics = {
            "copy_rate": Metric(copy_rate, m, cr_lo, cr_hi),
            "flagged_rate": Metric(k / m, m, fl_lo, fl_hi, floor=floor / m),
            "control_sensitivity_score": _control_metric(control),
            "synthetic_duplicate_rate": dup_metric,
        }
        if control is not None and control.sensitivity < 0.5:
            missed = [f.family for f in control.families if f.found < f.planted]
            warnings.append(
                f"The positive control found only {control.n_found} of {control.n_planted} planted copies "
                f"({control.sensitivity:.0%}); missed families: {', '.join(missed)}. This audit could have "
                "missed copies of those kinds: add an embedding space that is invariant to them."
            )
        if options.method == "fdr" and floor > 1:
            warnings.append(
                f"Detection floor: with {n_min} null scores, {m} synthetic images and FDR {options.fdr:g}, "
                f"BH can only flag copies when there are at least {floor} of them ({floor / m:.1%} of the set). "
                f"The {int(above.sum())} image(s) more similar to training than every null score are listed regardless."
            )
        search = _search_record(ctx, spaces, options, cut, warnings)
        return CopiesResult(
            status=CheckStatus.ASSESSED,
            reason=None,
            summary=_summary(k, m, options, copy_rate, cr_lo, cr_hi, len(copied), n_patients, primary.source, control),
            warnings=tuple(warnings),
            metrics=metrics,
            threshold=conformal_threshold(null_scores, cut),
            n_flagged=k,
            detection_floor=floor,
            n_train_images_copied=len(copied),
            n_train_patients_copied=n_patients,
            positive_control=control,
            flagged=flagged,
            search=search,
            **common,
        )


# ---------------------------------------------------------------- scoring


def _score_spaces(ctx: AuditContext, specs: tuple[str, ...], options: CopiesOptions, warnings: list[str]) -> list[_Space]:
    """Score the synthetic set and the null in every space.

    Duplicates are judged once, by identical pixels or in the first (primary) space: a null
    image that duplicates a training image leaves the null of every space, so that the null
    images are the same in all spaces (needed to combine them). A learned space's idea of
    "near" is not used for this: it may put two different scans close together.
    """
    near = {spec: options.near_duplicate_similarity if options.near_duplicate_similarity is not None else ctx.space_of(spec).near_duplicate_similarity for spec in specs}
    indexes = _training_indexes(ctx, specs, options)

    def to_train(role: str, spec: str) -> Neighbors:
        # Exact searches go through the context, which shares them with other checks; an
        # approximate one stays inside this check (other checks do not measure its agreement).
        index = indexes[spec]
        if index is None:
            return ctx.neighbors(role, "train", k=1, embedder=spec)
        return index.search(ctx.space_of(spec).of(role), k=1)

    syn = {spec: to_train("synthetic", spec) for spec in specs}
    if ctx.holdout is None:
        null_raw, groups, duplicates, null_rows = _training_null(ctx, specs, near)
        if options.score != "raw":
            warnings.append(f"{options.score} scores need real non-members; without a holdout, raw similarities are used")
        return [
            _Space(spec, syn[spec].similarities[:, 0].astype(np.float64), syn[spec].indices[:, 0], syn[spec].similarities[:, 0].astype(np.float64),
                   null_raw[spec], groups, duplicates, _fallback_source(ctx), "raw", ctx.space_of(spec).train, None, "raw", indexes[spec],
                   null_rows=null_rows)
            for spec in specs
        ]

    holdout = ctx.holdout
    train_by_digest = {d: i for i, d in enumerate(ctx.train.pixel_digests)}
    # The null's searches are exact whatever the index: a missed neighbour would lower a null
    # score and with it every p-value (false flags). Approximate search of the synthetic images
    # against training can only lower their scores (a missed copy), which the agreement check
    # measures. The reference searches (against the holdout) are exact too, below.
    hb = {spec: ctx.neighbors("holdout", "train", k=1, embedder=spec) for spec in specs}
    first = specs[0]
    keep = np.ones(len(holdout), dtype=bool)
    duplicates = []
    for i, digest in enumerate(holdout.pixel_digests):
        exact = train_by_digest.get(digest)
        if exact is not None or hb[first].similarities[i, 0] >= near[first]:
            keep[i] = False
            j = exact if exact is not None else int(hb[first].indices[i, 0])
            duplicates.append(DuplicatePair(holdout.ids[i], ctx.train.ids[j], float(hb[first].similarities[i, 0]), exact is not None))
    kept = np.flatnonzero(keep)
    groups = np.asarray(holdout.patient_ids)[kept] if holdout.patient_ids is not None else kept.astype(str)
    relative = options.score != "raw" and holdout.patient_ids is not None and len(set(groups.tolist())) >= 2
    if options.score != "raw" and holdout.patient_ids is None:
        # Each non-member's reference is the other non-members. Without patient ids those include
        # the same patient's other scans, which sit closer than any real reference image sits to
        # a synthetic one: the null's scores drop and clean images get flagged (measured: 2 of
        # 100 clean phantoms at FDR 5 %, 0 with ids). Raw similarities need no reference.
        warnings.append(
            f"the holdout has no patient ids, so the {options.score} score cannot leave a non-member's other scans "
            "out of its reference; raw similarities are used (give a manifest with patient ids for the stronger score)"
        )
    elif options.score != "raw" and not relative:
        warnings.append(f"{options.score} scores need non-members of at least two patients; raw similarities are used")
    out = []
    for spec in specs:
        space = ctx.space_of(spec)
        syn_sim = syn[spec].similarities[:, 0].astype(np.float64)
        null_sim = hb[spec].similarities[kept, 0].astype(np.float64)
        reference = None
        syn_score, null_score = syn_sim, null_sim
        syn_ref = None
        if relative:
            reference = np.ascontiguousarray(space.holdout[kept])
            null_ref = knn_excluding_self(reference, k=1, groups=groups).similarities[:, 0].astype(np.float64)
            # Exact, like the null's own reference search: an approximate miss here would lower
            # s_ref, raise the score and make false flags (measured on the phantoms with a
            # coarse IVF: 1 and 2 spurious tail images).
            syn_ref = knn(space.synthetic, reference, k=1).similarities[:, 0].astype(np.float64)
            syn_score, null_score = score_against(syn_sim, syn_ref, options.score), score_against(null_sim, null_ref, options.score)
        out.append(_Space(spec, syn_sim, syn[spec].indices[:, 0], syn_score, null_score, groups, duplicates, "holdout", options.score if relative else "raw",
                          space.train, reference, options.score if relative else "raw", indexes[spec], syn_ref, kept))
    return out


#: The name the aligned-correlation component goes by among the spaces (evidence, p-values).
ALIGNED = "aligned"


@dataclass
class _AlignedSpace(_Space):
    """The aligned-correlation component (:mod:`privaudit.align`), scored like a space: the
    similarity is the best NCC with a candidate training image, and the score is formed from it
    and the best NCC with a reference image exactly as an embedding space's."""

    align: AlignOptions = field(default_factory=AlignOptions)
    base: AlignedImages | None = None
    ref_base: AlignedImages | None = None

    def score_images(self, ctx: AuditContext, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        query = prepare(images, self.align, role="query")
        assert self.base is not None
        found = match(query, self.base, self.align)
        if self.ref_base is None:
            return found.similarity, found.nearest, found.similarity
        ref = match(query, self.ref_base, self.align).similarity
        return found.similarity, found.nearest, score_against(found.similarity, ref, self.kind)

    def score_extra(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise TypeError("the aligned component scores images, not vectors: use score_images")


def _aligned_space(ctx: AuditContext, primary: _Space, options: CopiesOptions, warnings: list[str]) -> tuple[_Space | None, AlignedRecord]:
    """The aligned component on the same synthetic and null images as ``primary``, or None
    (with the reason) when it is turned off or a set is above ``align_max``."""
    align = AlignOptions()

    def record(reason: str | None) -> AlignedRecord:
        weight = options.aligned_weight if reason is None else None
        return AlignedRecord(
            reason is None, reason, align.candidates, align.size, align.angles, align.crops, align.smooth, align.aspect, align.core, align.crop_core, weight
        )

    if not options.align:
        return None, record("turned off (copies.align = false)")
    rows = primary.null_rows
    if rows is None or len(rows) == 0:
        return None, record("the null holds no image")
    reason = _above_align_max(options, len(ctx.train), len(ctx.synthetic), len(rows))
    if reason is not None:
        warnings.append(
            f"The aligned comparison (copies mirrored, rotated, cropped or shifted) was not run: {reason}. "
            "Such copies are found only as well as the embedding spaces find them; raise copies.align_max to run it "
            "(measured: 119 s for a 10,000 x 10,000 x 2,000 copies check on 2 cores, against 6-8 s without it)."
        )
        return None, record(reason)
    source = ctx.holdout if primary.source == "holdout" else ctx.train
    assert source is not None
    null_images = select(source.images, rows)
    base = prepare(ctx.train.images, align, role="base")
    syn_q = prepare(ctx.synthetic.images, align, role="query")
    null_q = prepare(null_images, align, role="query")
    syn = match(syn_q, base, align)
    syn_sim, syn_nearest = syn.similarity, syn.nearest
    exclude = None
    if primary.source != "holdout":  # the within-training null: leave the image's own patient (or itself) out
        own = np.asarray(ctx.train.patient_ids) if ctx.train.patient_ids is not None else np.arange(len(ctx.train)).astype(str)
        exclude = (own[rows], own)
    null_sim = match(null_q, base, align, groups=exclude).similarity
    syn_score, null_score, ref_base, syn_ref = syn_sim, null_sim, None, None
    if primary.reference is not None:  # scored against real non-members, as the spaces are
        ref_base = as_role(null_q, align, role="base")  # the null images, resized once
        null_ref = match(null_q, ref_base, align, groups=(primary.null_group, primary.null_group)).similarity
        syn_ref = match(syn_q, ref_base, align).similarity
        syn_score, null_score = score_against(syn_sim, syn_ref, primary.kind), score_against(null_sim, null_ref, primary.kind)
    space = _AlignedSpace(
        ALIGNED, syn_sim, syn_nearest, syn_score, null_score, primary.null_group, primary.duplicates, primary.source, primary.score,
        np.empty((0, 0), dtype=np.float32), None, primary.kind, None, syn_ref, rows, align=align, base=base, ref_base=ref_base,
    )
    return space, record(None)


def _above_align_max(options: CopiesOptions, n_train: int, n_synthetic: int, n_null: int) -> str | None:
    """Which sets are too large for the aligned comparison (``None``: none is)."""
    sizes = {"training": n_train, "synthetic": n_synthetic, "null": n_null}
    above = [f"{name} {n:,}" for name, n in sizes.items() if n > options.align_max]
    if above:
        return f"{', '.join(above)} image(s), above copies.align_max = {options.align_max:,}"
    return None


def _index_seed(ctx: AuditContext) -> int:
    """The k-means seed of approximate indexes, from the audit seed."""
    return int(ctx.rng("copies-index").integers(2**31 - 1))


def _training_indexes(ctx: AuditContext, specs: tuple[str, ...], options: CopiesOptions) -> dict[str, SearchIndex | None]:
    """Per space, the approximate index over training, or ``None`` where search is exact."""
    n = len(ctx.train)
    if resolve_index(options.index, n, approximate_from=options.approximate_from) == "exact":
        return {spec: None for spec in specs}
    seed = _index_seed(ctx)
    return {spec: SearchIndex(ctx.space_of(spec).train, index="ivf", seed=seed) for spec in specs}


def _tail_score(null_scores: np.ndarray, cut: float | None) -> float | None:
    """The lower of the score an image must exceed to be flagged on one space's evidence
    (p <= ``cut``) and the highest null score; ``None`` without a null."""
    if not len(null_scores):
        return None
    top = float(null_scores.max())
    if cut is None:
        return top
    return min(top, conformal_threshold(null_scores, cut))


def _agreement(ctx: AuditContext, s: _Space, options: CopiesOptions, cut: float | None) -> SearchAgreement:
    """Exact search on a seeded sample of synthetic images and on every image the approximate
    search put in the tail, compared with what the approximate search gave them."""
    assert s.index is not None
    vectors = ctx.space_of(s.spec).synthetic
    m = len(s.syn_score)
    rng = ctx.rng(f"copies-agreement:{s.spec}")
    sample = np.sort(rng.choice(m, size=min(m, options.agreement_sample), replace=False))
    tau = _tail_score(s.null_score, cut)
    tail = np.flatnonzero(s.syn_score >= tau) if tau is not None else np.array([], dtype=np.int64)
    check = np.union1d(sample, tail).astype(np.int64)
    exact_sim = s.index.exact(vectors[check], k=1).similarities[:, 0].astype(np.float64)
    same = np.abs(exact_sim - s.syn_similarity[check]) <= _SAME_SIMILARITY
    exact_score = exact_sim
    if s.reference is not None:
        exact_ref = knn(vectors[check], s.reference, k=1).similarities[:, 0].astype(np.float64)
        exact_score = score_against(exact_sim, exact_ref, s.kind)
        assert s.syn_reference is not None
        same &= np.abs(exact_ref - s.syn_reference[check]) <= _SAME_SIMILARITY
    if tau is None:
        exact_tail = approx_tail = np.zeros(len(check), dtype=bool)
    else:
        exact_tail = exact_score >= tau
        approx_tail = s.syn_score[check] >= tau
    # The same pair found (to float32 rounding) counts as found even where rounding puts one
    # score on the other side of the tail's edge.
    found = exact_tail & (approx_tail | same)
    spurious = approx_tail & ~exact_tail & ~same
    in_sample = np.isin(check, sample)
    return SearchAgreement(
        embedder=s.spec,
        tail_score=tau,
        n_sampled=len(sample),
        n_tail_checked=len(tail),
        n_exact_tail=int(exact_tail.sum()),
        n_found=int(found.sum()),
        n_spurious=int(spurious.sum()),
        sampled_top1_agreement=float(same[in_sample].mean()) if in_sample.any() else None,
    )


def _search_record(ctx: AuditContext, spaces: list[_Space], options: CopiesOptions, cut: float | None, warnings: list[str]) -> SearchRecord:
    """What index was used and, when approximate, its measured agreement (warning when short)."""
    approx = [s for s in spaces if s.index is not None]
    n = len(ctx.train)
    if not approx:
        return SearchRecord("exact", options.index, n, options.approximate_from, None, None, None, None, ())
    info = approx[0].index.info  # type: ignore[union-attr]
    agreement = tuple(_agreement(ctx, s, options, cut) for s in approx)
    for a in agreement:
        if a.n_found < a.n_exact_tail:
            warnings.append(
                f"Approximate search ({info.index.upper()}, {info.nlist} lists, {info.nprobe} scanned per image) missed "
                f"{a.n_exact_tail - a.n_found} of the {a.n_exact_tail} synthetic images that exact search puts at or above the "
                f"copy threshold in the {a.embedder} space, among the {a.n_sampled} sampled and {a.n_tail_checked} tail images "
                "checked: copies may have been missed. Rerun with copies.index = \"exact\"."
            )
        if a.n_spurious:
            warnings.append(
                f"Approximate search put {a.n_spurious} synthetic image(s) at or above the copy threshold in the {a.embedder} "
                "space that exact search does not. Rerun with copies.index = \"exact\"."
            )
    return SearchRecord(info.index, options.index, n, options.approximate_from, info.nlist, info.nprobe, info.train_points, info.kmeans_iterations, agreement)


#: Cosine distances below this count as 0 in the ratio score (float32 embeddings resolve ~1e-7).
_MIN_DISTANCE = 1e-6


def score_against(s_train: np.ndarray, s_ref: np.ndarray, kind: str) -> np.ndarray:
    """The copy score from the similarity to the nearest training image and to the nearest real
    non-member: ``ratio`` = ``log((1 - s_ref) / (1 - s_train))``, ``relative`` =
    ``s_train - s_ref``. Higher means more like a copy."""
    if kind == "ratio":
        d_train = np.clip(1.0 - s_train, _MIN_DISTANCE, None)
        d_ref = np.clip(1.0 - s_ref, _MIN_DISTANCE, None)
        return np.log(d_ref) - np.log(d_train)
    return s_train - s_ref


def _fallback_source(ctx: AuditContext) -> str:
    return "training_leave_one_patient_out" if ctx.train.patient_ids is not None else "training_leave_one_image_out"


def _training_null(
    ctx: AuditContext, specs: tuple[str, ...], near: Mapping[str, float]
) -> tuple[dict[str, np.ndarray], np.ndarray, list[DuplicatePair], np.ndarray]:
    """Leave-one-patient-out similarities inside training, in every space, on common images
    (and those images' training rows)."""
    train = ctx.train
    groups = None if train.patient_ids is None else np.asarray(train.patient_ids)
    nbs = {spec: knn_excluding_self(ctx.space_of(spec).train, k=1, groups=groups) for spec in specs}
    sims = {spec: nb.similarities[:, 0].astype(np.float64) for spec, nb in nbs.items()}
    valid = np.all([np.isfinite(v) for v in sims.values()], axis=0)  # one patient: no neighbour
    owners: dict[bytes, list[int]] = {}
    for i, digest in enumerate(train.pixel_digests):
        owners.setdefault(digest, []).append(i)
    duplicates, keep = [], valid.copy()
    first = specs[0]
    for i in np.flatnonzero(valid):
        twins = [j for j in owners[train.pixel_digests[i]] if j != i and (groups is None or groups[j] != groups[i])]
        if twins or sims[first][i] >= near[first]:
            keep[i] = False
            j = twins[0] if twins else int(nbs[first].indices[i, 0])
            duplicates.append(DuplicatePair(train.ids[i], train.ids[j], float(sims[first][i]), bool(twins)))
    kept = np.flatnonzero(keep)
    g = groups[kept] if groups is not None else kept.astype(str)
    return {spec: v[kept] for spec, v in sims.items()}, g, duplicates, kept


def combined_pvalues(syn_scores: list[np.ndarray], null_scores: list[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Conformal p-values of synthetic images, combining several spaces without a Bonferroni
    factor.

    With one space, the plain conformal p-value. With several, the statistic is the smallest
    per-space p-value (min-p, so an image that stands out in any one space stands out), each
    divided by its space's weight where ``weights`` are given (weighted min-p: a space with
    twice the weight needs half the evidence; equal weights are plain min-p), and it is
    calibrated, exactly, against the same statistic of the null images in the null augmented
    with the image under test (full conformal: a null image's per-space p-value counts the test
    image when it scores at least as high). The result has the resolution of one space,
    ``1 / (n + 1)``; a Bonferroni combination would need ``S`` times more non-members for the
    same detection floor. The weights only shift power between spaces: the p-values are valid
    whatever they are. The null images must be the same, in the same order, in every space.

    Computed on an integer grid: each space's rank times a factor proportional to one over its
    weight (the weights are read as fractions with denominators up to 100). The test image
    raises a null image's rank by at most one in each space, so a null image's exact statistic
    lies between its statistic without the test image (``lo``) and with one more in every
    space (``hi``): those with ``hi`` at most the test image's statistic are counted, those
    with ``lo`` above it are not, and only the few in between are recomputed, pair by pair.
    (Computing the null's statistics once without the test image would be wrong in one
    direction or the other: ``/ n`` is anti-conservative for null-like images, ``/ (n + 1)``
    triples the p-value of a perfect copy in two spaces.)
    """
    if len(syn_scores) == 1:
        return conformal_pvalues(syn_scores[0], null_scores[0])
    syn = np.stack([np.asarray(x, dtype=np.float64) for x in syn_scores])  # (S, m)
    null = np.stack([np.asarray(x, dtype=np.float64) for x in null_scores])  # (S, n)
    n, m = null.shape[1], syn.shape[1]
    factor = _weight_factors(weights, len(syn_scores))[:, None]  # (S, 1), integers
    # Ranks: r[s, j] = #{k: null_sk >= null_sj} (itself included); a[s, i] = 1 + #{k: null_sk >= syn_si}.
    null_sorted = np.sort(null, axis=1)
    ranks = np.stack([n - np.searchsorted(v, x, side="left") for v, x in zip(null_sorted, null)]).astype(np.int64)
    a = np.stack([1 + n - np.searchsorted(v, sy, side="left") for v, sy in zip(null_sorted, syn)]).astype(np.int64)
    stat = (a * factor).min(axis=0)  # (m,) the test images' statistics
    lo = (ranks * factor).min(axis=0)  # (n,) the null's, without the test image
    hi = ((ranks + 1) * factor).min(axis=0)  # ... with the test image above it in every space
    count = 1 + np.searchsorted(np.sort(hi), stat, side="right")  # itself, and hi <= stat
    # The undecided: lo <= stat < hi. As hi <= lo + max(factor), their lo lies in
    # (stat - max(factor), stat]: one slice of the null sorted by lo per test image.
    order = np.argsort(lo, kind="stable")
    lo_sorted = lo[order]
    start = np.searchsorted(lo_sorted, stat - int(factor.max()), side="right")
    lengths = np.searchsorted(lo_sorted, stat, side="right") - start
    test = np.repeat(np.arange(m), lengths)
    within = np.arange(test.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    other = order[np.repeat(start, lengths) + within]
    keep = hi[other] > stat[test]
    test, other = test[keep], other[keep]
    exact = ((ranks[:, other] + (syn[:, test] >= null[:, other])) * factor).min(axis=0)
    count += np.bincount(test[exact <= stat[test]], minlength=m)
    return count / (n + 1.0)


def _weight_factors(weights: Sequence[float] | None, n_spaces: int) -> np.ndarray:
    """Integer factors proportional to one over each weight (1 for equal weights)."""
    if weights is None:
        return np.ones(n_spaces, dtype=np.int64)
    if len(weights) != n_spaces or any(not w > 0 for w in weights):
        raise ValueError(f"expected {n_spaces} positive weights, got {list(weights)}")
    inverse = [1 / Fraction(w).limit_denominator(100) for w in weights]
    scale = math.lcm(*(f.denominator for f in inverse))
    ints = [int(f * scale) for f in inverse]
    g = math.gcd(*ints)
    return np.array([i // g for i in ints], dtype=np.int64)


def _scoring(spaces: list[_Space], aligned: AlignedRecord) -> tuple[list[_Space], tuple[float, ...] | None]:
    """The components combined and their weights (None: alike). Where the aligned comparison ran
    it is the last of ``spaces``, with ``aligned.weight``; the embedding spaces share the rest."""
    if not aligned.used or aligned.weight is None:
        return spaces, None
    if aligned.weight >= 1.0:
        return spaces[-1:], None
    others = len(spaces) - 1
    return spaces, (*[(1.0 - aligned.weight) / others] * others, aligned.weight)


def _combined(spaces: list[_Space], syn_scores: list[np.ndarray] | None = None, weights: Sequence[float] | None = None) -> np.ndarray:
    scores = syn_scores if syn_scores is not None else [s.syn_score for s in spaces]
    return combined_pvalues(scores, [s.null_score for s in spaces], weights)


def _bh_adjusted(p: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values: the smallest FDR level at which each would be rejected."""
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    ranked = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def _bootstrap_storey(
    spaces: list[_Space], alpha: float, replicates: int, rng: np.random.Generator, weights: Sequence[float] | None = None
) -> tuple[float | None, float | None]:
    """Percentile interval of the copied-share estimate, resampling null patients (their images
    together: scans of one patient are not independent) and synthetic images.

    Resampling patients changes the null's size, and with it the attainable level: each
    replicate uses its own ``lambda = attainable_level(alpha, n_b)``, as the estimate itself
    does. Replicates whose null is too small for any level (possible only with a null near
    ``1 / alpha`` scores) are left out; with fewer than half the replicates left the interval
    is not computed.
    """
    if replicates == 0:
        return (None, None)
    m = len(spaces[0].syn_score)
    by: dict[str, list[int]] = {}
    for i, g in enumerate(spaces[0].null_group.tolist()):
        by.setdefault(g, []).append(i)
    patients = list(by.values())
    estimates = np.full(replicates, np.nan)
    for b in range(replicates):
        rows = np.concatenate([patients[i] for i in rng.integers(0, len(patients), len(patients))]).astype(np.int64)
        syn_idx = rng.integers(0, m, m)
        lam_b = attainable_level(alpha, len(rows))
        if lam_b == 0.0:
            continue
        p = combined_pvalues([s.syn_score[syn_idx] for s in spaces], [s.null_score[rows] for s in spaces], weights)
        estimates[b] = storey_nonnull_share(p, lam_b)
    if np.isfinite(estimates).sum() < replicates / 2:
        return (None, None)
    lo, hi = np.nanquantile(estimates, [0.025, 0.975])
    return (float(lo), float(hi))


# ---------------------------------------------------------------- flagged pairs


def _flagged_pairs(
    ctx: AuditContext, spaces: list[_Space], idx: np.ndarray, pvalues: np.ndarray, qvalues: np.ndarray, n_explain: int
) -> tuple[FlaggedCopy, ...]:
    """The flagged pairs. Each pair's training image is the nearest one in the space with the
    strongest evidence (the smallest p-value; the first space on ties): a mirrored copy is
    found by the learned space, and the pixel space's nearest image would be a stranger."""
    from privaudit.explain import explain_pair

    train_pids = ctx.train.patient_ids
    out = []
    for rank, i in enumerate(idx):
        evidence = tuple(
            SpaceEvidence(
                embedder=s.spec,
                train_id=ctx.train.ids[int(s.syn_nearest[i])],
                similarity=float(s.syn_similarity[i]),
                score=float(s.syn_score[i]),
                p_value=float(conformal_pvalues(s.syn_score[i : i + 1], s.null_score)[0]),
            )
            for s in spaces
        )
        lead = min(range(len(spaces)), key=lambda k: (evidence[k].p_value, k))
        j = int(spaces[lead].syn_nearest[i])
        ssim = likely = None
        if rank < n_explain:
            explanation = explain_pair(ctx.synthetic.images[i], ctx.train.images[j])
            ssim, likely = explanation.ssim, explanation.likely_transform
        out.append(
            FlaggedCopy(
                synthetic_id=ctx.synthetic.ids[i],
                train_id=ctx.train.ids[j],
                train_patient_id=train_pids[j] if train_pids else None,
                similarity=float(spaces[lead].syn_similarity[i]),
                p_value=float(pvalues[i]),
                q_value=float(qvalues[i]),
                evidence=evidence,
                ssim=ssim,
                likely_transform=likely,
            )
        )
    return tuple(out)


# ---------------------------------------------------------------- positive control


def _positive_control(
    ctx: AuditContext,
    spaces: list[_Space],
    pvalues: np.ndarray,
    options: CopiesOptions,
    rng: np.random.Generator,
    weights: Sequence[float] | None = None,
) -> PositiveControl:
    families = list(transforms.FAMILIES)
    n = min(options.positive_control, len(ctx.train))
    picks = rng.choice(len(ctx.train), size=n, replace=False)
    planted_family = [families[k % len(families)] for k in range(n)]
    images = [transforms.apply(f, ctx.train.images[int(i)], rng) for f, i in zip(planted_family, picks)]
    scores, nearests, space_p = [], [], []
    for s in spaces:
        _, nn, score = s.score_images(ctx, images)
        scores.append(score)
        nearests.append(nn)
        space_p.append(conformal_pvalues(score, s.null_score))
    # "Linked" as for flagged pairs: the nearest training image in the space with the strongest
    # evidence (smallest p-value; the first space on ties).
    lead = np.argmin(np.stack(space_p), axis=0)
    nearest = np.stack(nearests)[lead, np.arange(len(images))]
    planted_p = _combined(spaces, scores, weights)
    if options.method == "fdr":
        found = control_found_bh(pvalues, planted_p, len(spaces[0].null_score), options.fdr, prevalence=options.control_prevalence)
    else:
        found = planted_p <= attainable_level(options.alpha, len(spaces[0].null_score)) + 1e-12
    rows = []
    for family in families:
        sel = np.array([f == family for f in planted_family])
        if sel.any():
            rows.append(
                FamilyControl(
                    family=family,
                    planted=int(sel.sum()),
                    found=int(found[sel].sum()),
                    linked=int((nearest[sel] == picks[sel]).sum()),
                )
            )
    return PositiveControl(n_planted=n, n_found=int(found.sum()), sensitivity=float(found.mean()) if n else math.nan, families=tuple(rows))


def control_found_bh(pvalues: np.ndarray, planted_p: np.ndarray, n_null: int, fdr: float, *, prevalence: float = 0.05) -> np.ndarray:
    """Whether BH would flag each planted copy, judged one at a time.

    Each planted copy is judged on its own, as one of ``d`` copies like it that take the place
    of the set's ``d`` least copy-like images: ``d = max(ceil(prevalence m), floor)``, the floor
    being the fewest copies BH can flag at all. So "found" means: if copies of this kind made
    up ``prevalence`` of the set, they would be flagged. Planting every control copy into one
    BH run instead would add dozens of discoveries, relax BH's cut, and overstate what the audit
    finds in a set that holds few copies.
    """
    m = len(pvalues)
    if m == 0:
        return np.zeros(len(planted_p), dtype=bool)
    d = min(m, max(math.ceil(prevalence * m - 1e-9), bh_detection_floor(m, n_null, fdr)))
    kept = np.sort(np.asarray(pvalues, dtype=np.float64))[: m - d]
    return np.array([bool(benjamini_hochberg(np.concatenate([kept, np.full(d, p)]), fdr)[-1]) for p in planted_p], dtype=bool)


def _control_metric(control: PositiveControl | None) -> Metric:
    if control is None or control.n_planted == 0:
        return Metric(None, 0, direction=Direction.HIGHER_IS_BETTER)
    lo, hi = clopper_pearson(control.n_found, control.n_planted)
    return Metric(control.sensitivity, control.n_planted, lo, hi, direction=Direction.HIGHER_IS_BETTER)


# ---------------------------------------------------------------- duplicates inside a set


def _internal_duplicates(ctx: AuditContext, role: str, spec: str, options: CopiesOptions) -> InternalDuplicates:
    images = ctx.images(role)
    space = ctx.space_of(spec)
    near = options.near_duplicate_similarity if options.near_duplicate_similarity is not None else space.near_duplicate_similarity
    owners: dict[bytes, list[int]] = {}
    for i, d in enumerate(images.pixel_digests):
        owners.setdefault(d, []).append(i)
    exact_pairs = [(g[0], j) for g in owners.values() if len(g) > 1 for j in g[1:]]
    n_exact = sum(len(g) * (len(g) - 1) // 2 for g in owners.values())
    involved = {i for g in owners.values() if len(g) > 1 for i in g}
    near_pairs: list[tuple[int, int, float]] = []
    if len(images) > 1:
        nb = knn_excluding_self(space.of(role), k=1)
        for i in range(len(images)):
            j, s = int(nb.indices[i, 0]), float(nb.similarities[i, 0])
            if j > i and s >= near and images.pixel_digests[i] != images.pixel_digests[j]:
                near_pairs.append((i, j, s))
                involved.update((i, j))
    examples = [DuplicatePair(images.ids[j], images.ids[i], 1.0, True) for i, j in exact_pairs[:MAX_EXAMPLES]]
    for i, j, s in sorted(near_pairs, key=lambda t: -t[2])[: max(0, MAX_EXAMPLES - len(examples))]:
        examples.append(DuplicatePair(images.ids[j], images.ids[i], s, False))
    return InternalDuplicates(role=role, n_images_involved=len(involved), n_exact_pairs=n_exact, n_near_pairs=len(near_pairs), examples=tuple(examples))


# ---------------------------------------------------------------- words and charts


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
    return SimilarityHistogram(edges=tuple(float(e) for e in edges), synthetic=tuple(int(c) for c in syn), null=tuple(int(c) for c in null))


def _summary(
    k: int,
    m: int,
    options: CopiesOptions,
    rate: float,
    lo: float | None,
    hi: float | None,
    n_images: int,
    n_patients: int | None,
    source: str,
    control: PositiveControl | None,
) -> str:
    against = "real images of patients the generator never saw" if source == "holdout" else "a weaker within-training estimate (no holdout)"
    level = f"a false discovery rate of {options.fdr:.0%}" if options.method == "fdr" else f"a per-image level of {options.alpha:g}"
    text = f"{k} of {m} synthetic images ({k / m:.1%}) are flagged as copies of training images, compared with {against}, at {level}."
    if k:
        whose = f" of {n_patients} patient{'s' * (n_patients != 1)}" if n_patients is not None else ""
        text += f" They resemble {n_images} distinct training image{'s' * (n_images != 1)}{whose}."
    interval = f" (95% CI {lo:.1%} to {hi:.1%})" if lo is not None and hi is not None else ""
    text += f" The estimated share of copies is {rate:.1%}{interval}."
    if control is not None and control.n_planted:
        text += f" A positive control found {control.n_found} of {control.n_planted} planted copies ({control.sensitivity:.0%})."
    return text
