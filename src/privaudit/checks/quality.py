"""``quality``: what the synthetic set is still worth, next to what real data is worth.

Privacy alone would pass an empty or useless synthetic set. This check measures how well the
synthetic images stand in for real ones, always against the **holdout** (real images of patients
the generator never saw: against its own training set, a generator that copies scores best),
and always next to a **real-vs-real baseline**: the same figure for the training images against
the same holdout. In a feature space other than Inception's, a number means little without it.

* FID and KID in the embedding space of ``embedder`` (lower is better);
* precision, recall, density and coverage with k-NN radii (higher is better);
* the classification accuracy score (CAS): a classifier trained on labelled synthetic images,
  tested on the labelled holdout, next to the same classifier trained on real training images
  (TRTR), their ratio and per-class figures. Not assessed when labels are missing.

Both sides of every comparison use the same number of images, ``m = min(n_train, n_synthetic)``
(the larger set is subsampled with the audit seed), against the same holdout: FID's small-sample
bias, the k-NN radii and a classifier's accuracy all depend on n.

The metric functions are public in :mod:`privaudit.metrics`.
"""

from __future__ import annotations

import math
import warnings as pywarnings
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from privaudit.checks.base import (
    CHECKS,
    AuditContext,
    Check,
    CheckResult,
    CheckStatus,
    Direction,
    EmbeddedSets,
    Metric,
    MetricSpec,
)
from privaudit.errors import ConfigError
from privaudit.metrics import (
    CASResult,
    cas_from_predictions,
    FIDSample,
    fid_jackknife,
    fit_predict_cnn,
    fit_predict_linear,
    kid,
    knn_radii_sq,
    prdc_with_radii,
)
from privaudit.stats import clopper_pearson

#: Below this many compared images FID's upward bias is large enough to say so next to it
#: (published FIDs use 10,000 to 50,000 images).
FID_SMALL_N = 10_000
#: Side of the images the optional CNN classifier is trained on.
CNN_SIZE = 32
_Z95 = 1.959963984540054


@dataclass(frozen=True)
class QualityOptions:
    """Options of the ``quality`` check.

    Attributes:
        embedder: the embedding space of FID, KID, PRDC and the linear CAS classifier; ``None``
            uses the audit's primary space. (Issue 7 asks for ``imagenet`` by default once that
            embedder exists.)
        k: neighbours of the k-NN radii of precision/recall/density/coverage (5, as both papers).
        kid_subsets: random subsets KID is averaged over.
        kid_subset_size: images drawn from each set per KID subset (1,000 as in torch-fidelity);
            capped at half the smaller set, so that subsets differ and their spread means
            something.
        fid_groups: groups of the delete-a-group jackknife behind FID's standard error (0: no
            interval). Patients are dealt into groups where a set has patient ids (largest
            first, into the group with the fewest images), images otherwise. Each group costs one FID from statistics computed
            once: milliseconds below ~1,000 images, about 0.2 s in 1,024 dimensions.
        max_compared: at most this many images per side (synthetic, training, holdout) enter
            the figures, drawn with the audit seed (0: all). Exact PRDC grows as N²; 20,000
            keeps it to about a minute and lies within the 10,000 to 50,000 that published
            FIDs use. Every figure reports its n.
        cas_classifier: ``"linear"`` (logistic regression on the embeddings, fast) or ``"cnn"``
            (a small CNN trained on the pixels at 32 x 32).
        cas_bootstrap: bootstrap replicates for the CAS intervals (0: no intervals).
    """

    embedder: str | None = None
    k: int = 5
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    fid_groups: int = 20
    max_compared: int = 20_000
    cas_classifier: Literal["linear", "cnn"] = "linear"
    cas_bootstrap: int = 1000

    #: Options of earlier versions, with what replaced them (a config naming one is refused with
    #: this, not with a bare "unknown key").
    RENAMED: ClassVar[dict[str, str]] = {
        "fid_bootstrap": "fid_groups (0.3.1: FID's interval comes from a delete-a-group jackknife; the bootstrap's was 6 to 11x too wide)",
    }

    def __post_init__(self) -> None:
        if self.embedder is not None:
            from privaudit.embed import EMBEDDERS

            EMBEDDERS.get(self.embedder)  # unknown names: ConfigError with a suggestion
        for name, low in (("k", 1), ("kid_subsets", 1), ("kid_subset_size", 2), ("fid_groups", 0), ("cas_bootstrap", 0), ("max_compared", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"quality.{name} must be an integer of at least {low}; got {value!r}")
        if self.fid_groups == 1:
            raise ConfigError("quality.fid_groups must be 0 (no interval) or at least 2 (a standard error needs two groups)")
        if 0 < self.max_compared <= self.k:
            raise ConfigError(f"quality.max_compared must be 0 (all images) or more than k = {self.k}; got {self.max_compared}")
        if self.cas_classifier not in ("linear", "cnn"):
            raise ConfigError(f"quality.cas_classifier must be 'linear' or 'cnn'; got {self.cas_classifier!r}")


@dataclass(frozen=True)
class Estimate:
    """One figure with its uncertainty: a 95 % interval, or (KID) the spread over subsets."""

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    spread: float | None = None


@dataclass(frozen=True)
class QualityFigure:
    """A quality figure for the synthetic set and for the real-vs-real baseline.

    Attributes:
        metric: its name in ``metrics`` and in a policy.
        name: its name in words.
        direction: how to read it.
        synthetic: synthetic vs holdout.
        baseline: training vs holdout, at the same n.
        n: images per side of the comparison (the holdout size for recall and coverage, which
            are shares of holdout images).
        uncertainty: how the interval or spread was obtained.
    """

    metric: str
    name: str
    direction: Direction
    synthetic: Estimate
    baseline: Estimate
    n: int
    uncertainty: str


@dataclass(frozen=True, kw_only=True)
class QualityResult(CheckResult):
    """Result of the ``quality`` check (see the module docstring)."""

    embedder: str
    feature_space: str
    n_train: int
    n_synthetic: int
    n_holdout: int
    n_compared: int
    n_holdout_compared: int
    k: int
    kid_subsets: int
    kid_subset_size: int
    figures: tuple[QualityFigure, ...]
    cas_classifier: str
    cas_reason: str | None
    cas: CASResult | None


_BETTER, _WORSE = Direction.HIGHER_IS_BETTER, Direction.HIGHER_IS_WORSE


@CHECKS.register("quality")
class QualityCheck(Check):
    """FID, KID, precision/recall, density/coverage and CAS against the holdout, each next to a
    real-vs-real baseline."""

    name = "quality"
    title = "Quality: what the synthetic images are worth"
    Options = QualityOptions
    metrics = {
        "precision_score": MetricSpec("precision_score", _BETTER, "share of synthetic images inside the real (holdout) k-NN manifold: fidelity"),
        "recall_score": MetricSpec("recall_score", _BETTER, "share of holdout images inside the synthetic k-NN manifold: diversity"),
        "density_score": MetricSpec("density_score", _BETTER, "mean number of holdout k-NN balls holding a synthetic image, over k; about 1 for real data"),
        "coverage_score": MetricSpec("coverage_score", _BETTER, "share of holdout images whose k-NN ball holds a synthetic image"),
        "fid_distance": MetricSpec("fid_distance", _WORSE, "Fréchet distance between Gaussian fits of synthetic and holdout embeddings"),
        "kid_distance": MetricSpec("kid_distance", _WORSE, "unbiased MMD² (cubic polynomial kernel) between synthetic and holdout embeddings, mean over subsets"),
        "cas_score": MetricSpec("cas_score", _BETTER, "holdout accuracy of a classifier trained on the labelled synthetic images"),
        "cas_ratio_score": MetricSpec("cas_ratio_score", _BETTER, "CAS divided by the accuracy of the same classifier trained on real training images; about 1 when synthetic images teach as much"),
        "precision_ratio_score": MetricSpec("precision_ratio_score", _BETTER, "precision of the synthetic set divided by that of the training set (the real-vs-real baseline); about 1 when as faithful as real images"),
        "coverage_ratio_score": MetricSpec("coverage_ratio_score", _BETTER, "coverage of the synthetic set divided by that of the training set (the real-vs-real baseline); about 1 when as diverse as real images"),
    }

    def spaces(self, options: QualityOptions, configured: tuple[str, ...]) -> tuple[str, ...]:
        """The space named by ``embedder``, or the audit's primary one."""
        return (options.embedder,) if options.embedder is not None else configured[:1]

    def run(self, ctx: AuditContext, options: QualityOptions) -> QualityResult:
        """Compare the synthetic and the training set with the holdout, at the same n."""
        space = ctx.space_of(options.embedder)
        info = space.info
        feature_space = (
            f"{info.name} embeddings ({info.dim}-d, unit length): {info.description}. Figures are "
            "comparable only with figures from the same embedder, never with published (Inception) FID or KID"
        )
        n_train, n_syn = len(ctx.train), len(ctx.synthetic)
        n_hold = 0 if ctx.holdout is None else len(ctx.holdout)
        cap = options.max_compared or max(n_train, n_syn, n_hold)
        m, h = min(n_train, n_syn, cap), min(n_hold, cap)
        common = dict(
            check=self.name,
            embedder=info.name,
            feature_space=feature_space,
            n_train=n_train,
            n_synthetic=n_syn,
            n_holdout=n_hold,
            n_compared=m,
            n_holdout_compared=h,
            k=options.k,
            kid_subsets=options.kid_subsets,
            cas_classifier=_classifier_name(options, info.name),
        )
        reason = None
        if ctx.holdout is None:
            reason = (
                "needs a holdout (--holdout): quality is measured against real images the generator "
                "never saw; against its own training set, a generator that copies scores best"
            )
        elif min(m, n_hold) <= options.k:
            reason = (
                f"needs more than k = {options.k} images in each set; got {n_train} training, "
                f"{n_syn} synthetic and {n_hold} holdout images"
            )
        if reason is not None:
            return QualityResult(
                status=CheckStatus.NOT_ASSESSED,
                reason=reason,
                summary=f"Quality could not be assessed: {reason}.",
                metrics={name: Metric(None, 0, direction=spec.direction) for name, spec in self.metrics.items()},
                kid_subset_size=0,
                figures=(),
                cas_reason=reason,
                cas=None,
                **common,
            )

        rng = ctx.rng("quality.subsample")
        syn_idx = _subsample(rng, n_syn, m)
        train_idx = _subsample(rng, n_train, m)
        hold_idx = _subsample(rng, n_hold, h)
        hold = space.of("holdout")[hold_idx]
        compared = {"synthetic": space.synthetic[syn_idx], "baseline": space.train[train_idx]}
        warnings: list[str] = [f"Figures are in the space of {feature_space}."]
        if max(n_train, n_syn, n_hold) > cap:
            warnings.append(
                f"At most {cap} images per side enter the figures (quality.max_compared; exact PRDC grows as "
                f"N²): {m} synthetic and {m} training images against {h} of the {n_hold} holdout images, "
                "drawn at random with the audit seed."
            )
        elif n_syn > m:
            warnings.append(
                f"The synthetic set ({n_syn} images) is compared through a random subset of {m}, the "
                "training set's size, so that its figures and the real-vs-real baseline rest on the same n."
            )
        elif n_train > m:
            warnings.append(
                f"The real-vs-real baseline uses a random subset of {m} of the {n_train} training images, "
                "the synthetic set's size, so that both rest on the same n."
            )
        if m < FID_SMALL_N:
            warnings.append(
                f"FID is biased upwards at small n and its bias depends on n: with {m} images per side "
                f"({info.dim}-d features) read it only next to the real-vs-real baseline at the same n."
            )

        # Precision/recall/density/coverage: the holdout's radii are shared by both comparisons.
        hold_r2 = knn_radii_sq(hold, options.k)
        pr = {side: prdc_with_radii(hold, x, hold_r2, knn_radii_sq(x, options.k), k=options.k) for side, x in compared.items()}
        # FID with a jackknife standard error: the holdout's statistics and groups (patients) are
        # shared by both comparisons. KID over subsets: both sides draw their subsets from one
        # stream, so the holdout subsets are the same for both.
        kid_size = min(options.kid_subset_size, max(2, min(m, h) // 2))
        fids, fid_notes, fid_groups = _fid_estimates(ctx, options, hold, hold_idx, compared, syn_idx, train_idx)
        warnings.extend(fid_notes)
        # KID's kernel (x·y/d + 1)^3 was made for Inception activations, not unit vectors: on
        # unit-length embeddings x·y/d is ~1/d and the kernel is nearly linear (only the means
        # would be compared). Scaled to length sqrt(d), x·y/d is the cosine: (cos + 1)^3.
        root_d = math.sqrt(info.dim)
        kids = {
            side: kid(hold * root_d, x * root_d, n_subsets=options.kid_subsets, subset_size=kid_size, rng=ctx.rng("quality.kid"))
            for side, x in compared.items()
        }

        figures = [
            _binomial_figure("precision_score", "Precision", pr, lambda r: int((r.fake_ball_counts > 0).sum()), m, "synthetic"),
            _binomial_figure("recall_score", "Recall", pr, lambda r: int(r.real_in_fake_manifold.sum()), h, "holdout"),
            _density_figure(pr, m),
            _binomial_figure("coverage_score", "Coverage", pr, lambda r: int(r.real_covered.sum()), h, "holdout"),
            QualityFigure(
                "fid_distance", "FID", _WORSE, fids["synthetic"], fids["baseline"], m,
                f"approximate 95% interval: ± t(0.975, {fid_groups - 1}) delete-a-group jackknife standard errors ({fid_groups} groups "
                "of each set, patients kept together where known)" if fid_groups else
                ("no interval (fid_groups = 0)" if not options.fid_groups else "no interval (too few patients to leave a group out)"),
            ),
            QualityFigure(
                "kid_distance", "KID", _WORSE,
                Estimate(_finite(kids["synthetic"].mean), spread=_finite(kids["synthetic"].std)),
                Estimate(_finite(kids["baseline"].mean), spread=_finite(kids["baseline"].std)),
                m,
                f"mean ± standard deviation over {options.kid_subsets} subsets of {kid_size} images per set "
                "(the spread of one subset's estimate, not an interval of the mean); kernel (cos + 1)^3, "
                "i.e. KID's kernel on embeddings scaled to length sqrt(d)",
            ),
        ]
        ratios = {f"{fig.metric[: -len('_score')]}_ratio_score": _ratio(fig) for fig in (figures[0], figures[3])}

        cas_result, cas_reason, cas_warnings = _cas(ctx, options, space, syn_idx, train_idx, hold_idx)
        warnings.extend(cas_warnings)
        metrics = {f.metric: Metric(f.synthetic.value, f.n, f.synthetic.ci_low, f.synthetic.ci_high, f.direction) for f in figures}
        metrics["precision_ratio_score"] = Metric(ratios["precision_ratio_score"], m, direction=_BETTER)
        metrics["coverage_ratio_score"] = Metric(ratios["coverage_ratio_score"], h, direction=_BETTER)
        if cas_result is not None:
            metrics["cas_score"] = Metric(cas_result.cas, cas_result.n_test, cas_result.cas_ci_low, cas_result.cas_ci_high, _BETTER)
            metrics["cas_ratio_score"] = Metric(
                _finite(cas_result.ratio), cas_result.n_test, cas_result.ratio_ci_low, cas_result.ratio_ci_high, _BETTER
            )
        else:
            metrics["cas_score"] = Metric(None, 0, direction=_BETTER)
            metrics["cas_ratio_score"] = Metric(None, 0, direction=_BETTER)
        return QualityResult(
            status=CheckStatus.ASSESSED,
            reason=None,
            summary=_summary(figures, cas_result, cas_reason, m, h, info.name),
            metrics={name: metrics[name] for name in self.metrics},
            warnings=tuple(warnings),
            kid_subset_size=kid_size,
            figures=tuple(figures),
            cas_reason=cas_reason,
            cas=cas_result,
            **common,
        )


def _classifier_name(options: QualityOptions, embedder: str) -> str:
    if options.cas_classifier == "cnn":
        return f"small CNN on the pixels at {CNN_SIZE} x {CNN_SIZE} (3 conv blocks, 30 epochs of Adam)"
    return f"logistic regression on the standardised {embedder} embeddings"


def _subsample(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """``m`` of ``n`` indices, sorted (all of them when ``m == n``)."""
    if m >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=m, replace=False))


def _ratio(fig: QualityFigure) -> float | None:
    """Synthetic over baseline; ``None`` when either is missing or the baseline is 0."""
    s, b = fig.synthetic.value, fig.baseline.value
    return s / b if s is not None and b else None


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _binomial_figure(metric: str, name: str, pr: dict, successes, n: int, over: str) -> QualityFigure:
    """A share with a Clopper–Pearson interval over the images it is a share of."""
    est = {}
    for side, r in pr.items():
        x = successes(r)
        lo, hi = clopper_pearson(x, n)
        est[side] = Estimate(x / n, lo, hi)
    return QualityFigure(
        metric, name, _BETTER, est["synthetic"], est["baseline"], n,
        f"95% Clopper–Pearson interval over the {n} {over} images, holding the other set and its k-NN radii fixed",
    )


def _density_figure(pr: dict, m: int) -> QualityFigure:
    est = {}
    for side, r in pr.items():
        per = r.fake_ball_counts / r.k
        half = _Z95 * float(per.std(ddof=1)) / math.sqrt(m) if m > 1 else math.nan
        est[side] = Estimate(r.density, max(0.0, r.density - half), r.density + half)
    return QualityFigure(
        "density_score", "Density", _BETTER, est["synthetic"], est["baseline"], m,
        f"95% normal interval over the {m} compared images, holding the holdout and its k-NN radii fixed",
    )


def _fid_estimates(
    ctx: AuditContext, options: QualityOptions, hold: np.ndarray, hold_idx: np.ndarray, compared: dict, syn_idx: np.ndarray, train_idx: np.ndarray
) -> tuple[dict[str, Estimate], list[str], int]:
    """FID of each side against the holdout, with a delete-a-group jackknife interval; the
    warnings, and the most jackknife groups a side used (a side without an interval is warned of)."""
    if len(hold) < 2:
        return {side: Estimate(None) for side in compared}, [], 0
    notes: list[str] = []
    groups_used: dict[str, int] = {}
    groups = options.fid_groups or 2  # 0: the value alone (the groups are then never used)
    ids = {role: ctx.images(role).patient_ids for role in ("holdout", "synthetic", "train")}
    pick = lambda role, idx: None if ids[role] is None else [ids[role][i] for i in idx]  # noqa: E731
    real = FIDSample(hold, pick("holdout", hold_idx), n_groups=groups, rng=ctx.rng("quality.fid.holdout"), name="holdout")
    side_ids = {"synthetic": pick("synthetic", syn_idx), "baseline": pick("train", train_idx)}
    out = {}
    for side, x in compared.items():
        with pywarnings.catch_warnings():  # said in the check's warnings below, not on stderr
            pywarnings.simplefilter("ignore", RuntimeWarning)
            r = fid_jackknife(real, x, n_groups=options.fid_groups, fake_groups=side_ids[side], rng=ctx.rng(f"quality.fid.{side}"))
        out[side] = Estimate(None) if not math.isfinite(r.value) else Estimate(r.value, r.ci_low, r.ci_high)
        if options.fid_groups and r.se is None and math.isfinite(r.value):
            notes.append(
                f"FID ({side}) has no interval: its sets hold too few patients, or one patient holds nearly all "
                "of a set's images, to leave a jackknife group out"
            )
        groups_used[side] = r.n_groups
    return out, notes, max(groups_used.values(), default=0)


def _cas(
    ctx: AuditContext, options: QualityOptions, space: EmbeddedSets, syn_idx: np.ndarray, train_idx: np.ndarray, hold_idx: np.ndarray
) -> tuple[CASResult | None, str | None, list[str]]:
    """The classification accuracy score, or why it could not be measured."""
    missing = [role for role in ("synthetic", "train", "holdout") if ctx.images(role).labels is None]
    if missing:
        return None, f"needs class labels on every set; {', '.join(missing)} {'has' if len(missing) == 1 else 'have'} none", []
    syn_y = np.asarray(ctx.synthetic.labels)[syn_idx]
    train_y = np.asarray(ctx.train.labels)[train_idx]
    hold_y = np.asarray(ctx.images("holdout").labels)[hold_idx]
    warnings = []
    unseen = sorted(set(hold_y) - set(syn_y))
    if unseen:
        warnings.append(
            f"Holdout class(es) {', '.join(unseen)} do not occur in the synthetic set: a classifier "
            "trained on it cannot predict them, which lowers the CAS."
        )
    if len(set(train_y)) < 2 and len(set(syn_y)) < 2:
        return None, "needs at least two classes in the training or synthetic labels", warnings
    if options.cas_classifier == "cnn":
        from privaudit.embed.base import resized, select

        def pixels(role: str, idx: np.ndarray | None = None) -> np.ndarray:
            images = ctx.images(role).images
            return resized(images if idx is None else select(images, idx), CNN_SIZE)

        test = pixels("holdout", hold_idx)
        seed = int(ctx.rng("quality.cas.cnn").integers(2**31))
        pred_s = fit_predict_cnn(pixels("synthetic", syn_idx), syn_y, test, seed=seed)
        pred_r = fit_predict_cnn(pixels("train", train_idx), train_y, test, seed=seed)
    else:
        hold = space.of("holdout")[hold_idx]
        pred_s = fit_predict_linear(space.synthetic[syn_idx], syn_y, hold)
        pred_r = fit_predict_linear(space.train[train_idx], train_y, hold)
    holdout = ctx.images("holdout")
    result = cas_from_predictions(
        hold_y, pred_s, pred_r,
        train_synthetic_y=syn_y, train_real_y=train_y,
        groups=None if holdout.patient_ids is None else [holdout.patient_ids[i] for i in hold_idx],
        n_bootstrap=options.cas_bootstrap,
        rng=ctx.rng("quality.cas.bootstrap"),
        classifier=_classifier_name(options, space.info.name),
    )
    if holdout.patient_ids is None:
        warnings.append("The holdout has no patient ids: the CAS intervals resample images, as if scans of one patient were independent.")
    return result, None, warnings


def _summary(figures, cas: CASResult | None, cas_reason: str | None, m: int, n_hold: int, embedder: str) -> str:
    f = {fig.metric: fig for fig in figures}

    def pair(metric: str, fmt: str = ".2f") -> str:
        s, b = f[metric].synthetic.value, f[metric].baseline.value
        show = lambda v: "n/a" if v is None else format(v, fmt)  # noqa: E731
        return f"{show(s)} (real-vs-real {show(b)})"

    text = (
        f"Against {n_hold} real holdout images in the {embedder} space, {m} images per side: precision "
        f"{pair('precision_score')}, recall {pair('recall_score')}, density {pair('density_score')}, coverage "
        f"{pair('coverage_score')}; FID {pair('fid_distance', '.4g')}."
    )
    if cas is not None:
        text += (
            f" A classifier trained on the synthetic images is {cas.cas:.0%} accurate on the holdout; trained on as "
            f"many real training images, {cas.trtr:.0%}"
            + (f" (ratio {cas.ratio:.2f})." if math.isfinite(cas.ratio) else ".")
        )
    else:
        text += f" Classification accuracy score not assessed: {cas_reason}."
    return text
