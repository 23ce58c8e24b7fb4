"""``membership``: membership inference against the released synthetic set.

**Threat model.** The attacker holds the released synthetic set S and real reference images R
from the same population that were not used in training, and asks of a target image whether it
was in the generator's training set. They have no access to the generator. privaudit plays the
attacker: members are training images, non-members are real holdout images, and the attacks
score both from S and R alone.

**Splits** (seeded, by patient when both training and holdout carry patient ids): the holdout's
patients are shuffled; the first ``n`` are the evaluation non-members, the rest the reference R.
``n`` training patients, drawn at random, are the evaluation members; the other training
patients form the *control slice* (below). ``n = min(training patients // 2, holdout patients //
2, max_units)``: balanced, and a check on fewer than ``min_units`` per side is not assessed.

**Attacks** (:data:`ATTACKS`; one signature, so more can be registered), all in the cosine
geometry of an embedding space, higher meaning "member":

* ``dcr``: similarity to the closest synthetic image (distance to closest record);
* ``dcr_calibrated``: that similarity minus the similarity to the closest reference image
  (GAN-Leaks' calibrated attack, Chen et al. CCS 2020);
* ``domias``: the log density ratio ``log p_S(x) - log p_R(x)``, Gaussian KDEs in a PCA space
  fitted on S and R (DOMIAS, van Breugel et al. AISTATS 2023);
* ``knn_count``: the share of synthetic images among the target's ``k`` nearest neighbours in
  S and R together, as a log ratio to the share expected from the two sets' sizes (a kNN
  density-ratio estimate).

**Metrics.** ROC AUC (Mann–Whitney), TPR at FPR 0.1 %, 1 % and 10 % and at the lowest FPR the
sample resolves (``3 / n`` non-members; a rate it cannot resolve is reported as such, never as
0), attacker advantage ``max(TPR - FPR)``, 95 % intervals by bootstrap over patients (scans of one
patient are not independent), and ROC points for a log-log chart (Carlini et al., S&P 2022).

**Honest headline.** With several attacks and spaces, the best of many is optimistic. The
evaluation units are split in two halves: the attack and space with the highest AUC on the
*selection* half are chosen, and their figures are reported on the *report* half only.

**Shift control.** If the holdout is not like-for-like with training (another year, another
site), every attack separates the two populations and reports leakage that is only shift. Each
attack runs once more with the control slice — real training-population images of patients that
are not evaluation members — in place of the synthetic set: a generator that produced fresh
patients from the training population. Its AUC must hold 0.5 (two-sided, Bonferroni over the
attacks and spaces, and beyond a tolerance). When it does not, the holdout cannot serve as a
non-member population and the check is "not assessed". The same control catches an embedding
space that was fitted on the training images and treats them differently from new ones.

**No ε.** A single training run with non-random membership gives no valid differential-privacy
lower bound (Jagielski et al. 2020; Steinke et al. 2023): only TPR/FPR figures are reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from privaudit.checks.base import CHECKS, AuditContext, Check, CheckResult, CheckStatus, Direction, Metric, MetricSpec
from privaudit.errors import ConfigError
from privaudit.registry import Registry
from privaudit.search import NeighborMemo, knn
from privaudit.stats import attacker_advantage, lowest_resolvable_fpr, roc_auc, roc_points, thin_roc, tpr_at_fpr, weighted_auc

THREAT_MODEL = (
    "The attacker holds the released synthetic images and real reference images of the same population that were "
    "not used in training, and asks of a target image whether it was in the training set; no access to the generator."
)

#: The fixed FPRs at which TPR is reported (LiRA's operating points).
FPR_LEVELS = (0.001, 0.01, 0.1)


@dataclass(frozen=True)
class AttackData:
    """What an attack may use: the synthetic set and the reference set (unit vectors, one space).

    Attributes:
        synthetic, reference: the two sets.
        searches: where attacks run their k-NN searches (``data.searches.knn(targets, base,
            k=...)``), so that attacks needing the same search share it: ``dcr``,
            ``dcr_calibrated`` and ``knn_count`` all need each target's nearest synthetic and
            reference image, and the control's data shares the reference set (one search for
            both instead of four).
    """

    synthetic: np.ndarray
    reference: np.ndarray
    searches: NeighborMemo = field(default_factory=NeighborMemo, compare=False, repr=False)


#: An attack: ``(targets, data, options) -> scores``, one score per target row, higher = member.
Attack = Callable[[np.ndarray, AttackData, "MembershipOptions"], np.ndarray]
ATTACKS: Registry[Attack] = Registry("attack", entry_point_group="privaudit.attacks")


@ATTACKS.register("dcr")
def dcr(targets: np.ndarray, data: AttackData, options: MembershipOptions) -> np.ndarray:
    """Similarity to the closest synthetic image (``-min_S d`` with ``d = 1 - cos``)."""
    return data.searches.knn(targets, data.synthetic, k=1).similarities[:, 0].astype(np.float64)


@ATTACKS.register("dcr_calibrated")
def dcr_calibrated(targets: np.ndarray, data: AttackData, options: MembershipOptions) -> np.ndarray:
    """``-(min_S d - min_R d)``: closer to the synthetic set than to real non-members."""
    s = data.searches.knn(targets, data.synthetic, k=1).similarities[:, 0].astype(np.float64)
    r = data.searches.knn(targets, data.reference, k=1).similarities[:, 0].astype(np.float64)
    return s - r


@ATTACKS.register("domias")
def domias(targets: np.ndarray, data: AttackData, options: MembershipOptions) -> np.ndarray:
    """DOMIAS: ``log p_S(x) - log p_R(x)``, Gaussian KDEs (Scott's bandwidth) in the first
    ``domias_dim`` principal components of S and R together."""
    from scipy.stats import gaussian_kde

    from sklearn.decomposition import PCA

    # Memory: this attack held four float64 copies of the synthetic embeddings at once (the
    # float32 concatenation cast, PCA's centred copy, the cast and the centred projection
    # input): 28 KB per 1,024-d image, +880 MiB at 30,000 synthetic images. Concatenating
    # straight into float64, letting PCA centre ``both`` in place (it is not used afterwards)
    # and subtracting the mean during the cast compute the same numbers with one copy at a time.
    both = np.concatenate([data.synthetic, data.reference], dtype=np.float64)
    mean = both.mean(axis=0)
    dim = int(min(options.domias_dim, both.shape[1], min(len(data.synthetic), len(data.reference)) - 2))
    if dim < 1:
        return np.full(len(targets), np.nan)
    # Randomized PCA with a fixed seed: only a few components are needed, and a full SVD of
    # thousands of 1,024-d vectors costs seconds (measured: 11.6 s for 1,200 x 1,024 on 2 cores).
    basis = PCA(n_components=dim, svd_solver="randomized", random_state=0, copy=False).fit(both).components_.T
    del both

    def project(x: np.ndarray) -> np.ndarray:
        return (np.subtract(x, mean, dtype=np.float64) @ basis).T

    try:
        p_s = gaussian_kde(project(data.synthetic)).logpdf(project(targets))
        p_r = gaussian_kde(project(data.reference)).logpdf(project(targets))
    except np.linalg.LinAlgError:  # degenerate (e.g. identical points): no density
        return np.full(len(targets), np.nan)
    return p_s - p_r


@ATTACKS.register("knn_count")
def knn_count(targets: np.ndarray, data: AttackData, options: MembershipOptions) -> np.ndarray:
    """``log((c_S + 1/2) / |S|) - log((c_R + 1/2) / |R|)`` for the counts among the target's
    ``k`` nearest neighbours in S and R together; ties between targets are broken by the
    calibrated distance so that the ROC is not a staircase of a few counts."""
    pool = np.concatenate([data.synthetic, data.reference])
    k = int(min(options.k, len(pool)))
    # Not remembered: no other attack searches this pool, and the memo would keep it (a copy of
    # the synthetic and reference sets) alive for the rest of the check.
    nb = knn(targets, pool, k=k)
    c_s = (nb.indices < len(data.synthetic)).sum(axis=1).astype(np.float64)
    c_r = k - c_s
    score = np.log((c_s + 0.5) / len(data.synthetic)) - np.log((c_r + 0.5) / len(data.reference))
    return score + 1e-6 * dcr_calibrated(targets, data, options)


@dataclass(frozen=True)
class MembershipOptions:
    """Options of the ``membership`` check.

    Attributes:
        attacks: attacks to run (names in :data:`ATTACKS`).
        embedders: spaces to run them in; ``None`` uses every embedder of the audit that was
            not fitted on the training images (``pixels`` when there is none).
        min_units: fewest evaluation patients (or images) per side; fewer: not assessed.
        max_units: most evaluation patients (or images) per side (bounds the cost).
        require_patient_ids: without patient ids on training and holdout, splits cannot keep a
            patient's scans together (a non-member's other scan in the reference set makes it
            look like a non-member twice over): the check is then not assessed, unless this is
            ``False`` (image-level splits, with a warning).
        k: neighbours of the ``knn_count`` attack.
        domias_dim: principal components of the DOMIAS density estimate.
        bootstrap: replicates of the patient bootstrap behind every interval.
        shift_tolerance: a control AUC within 0.5 ± this never fails the control. Small
            evaluation sets scatter (measured on like-for-like phantoms with 30 patients per side:
            control AUCs from 0.32 to 0.63), and very large ones resolve differences too small to
            matter; a deviation under it still shows next to each attack's AUC.
        exposure_share: training patients whose membership score is above all but this share
            of non-members are listed as exposed (``0.01``: "in the top 1 %").
    """

    attacks: tuple[str, ...] = ("dcr", "dcr_calibrated", "domias", "knn_count")
    embedders: tuple[str, ...] | None = None
    min_units: int = 20
    max_units: int = 5000
    require_patient_ids: bool = True
    k: int = 10
    domias_dim: int = 5
    bootstrap: int = 200
    shift_tolerance: float = 0.1
    exposure_share: float = 0.01

    def __post_init__(self) -> None:
        if not self.attacks:
            raise ConfigError("membership.attacks is empty; leave it out for all attacks")
        for name in self.attacks:
            ATTACKS.get(name)  # raises with did-you-mean
        if len(set(self.attacks)) != len(self.attacks):
            raise ConfigError(f"membership.attacks lists an attack twice: {', '.join(self.attacks)}")
        if self.embedders is not None and not self.embedders:
            raise ConfigError("membership.embedders is empty; leave it out to use every embedder of the audit")
        if self.min_units < 4:
            raise ConfigError(f"membership.min_units must be at least 4; got {self.min_units}")
        if self.max_units < self.min_units:
            raise ConfigError(f"membership.max_units ({self.max_units}) must be at least min_units ({self.min_units})")
        for name in ("k", "domias_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"membership.{name} must be at least 1; got {getattr(self, name)}")
        if self.bootstrap < 0:
            raise ConfigError(f"membership.bootstrap must be >= 0; got {self.bootstrap}")
        if not 0.0 <= self.shift_tolerance < 0.5:
            raise ConfigError(f"membership.shift_tolerance must lie in [0, 0.5); got {self.shift_tolerance}")
        if not 0.0 < self.exposure_share < 1.0:
            raise ConfigError(f"membership.exposure_share must lie in (0, 1); got {self.exposure_share}")


@dataclass(frozen=True)
class TprAt:
    """TPR at one FPR; ``tpr`` is ``None`` when the sample cannot resolve that FPR."""

    fpr: float
    tpr: float | None
    resolvable: bool


@dataclass(frozen=True)
class AttackFigures:
    """One attack in one space, on all evaluation units (not corrected for picking the best)."""

    attack: str
    embedder: str
    auc: float | None
    auc_ci_low: float | None
    auc_ci_high: float | None
    advantage: float | None
    tpr_at: tuple[TprAt, ...]
    roc_fpr: tuple[float, ...]
    roc_tpr: tuple[float, ...]
    control_auc: float | None
    control_ci_low: float | None
    control_ci_high: float | None


@dataclass(frozen=True)
class Headline:
    """The attack picked on the selection half, measured on the report half."""

    attack: str
    embedder: str
    selection_auc: float
    n_members: int
    n_nonmembers: int
    n_member_units: int
    n_nonmember_units: int
    auc: float
    auc_ci_low: float | None
    auc_ci_high: float | None
    advantage: float
    advantage_ci_low: float | None
    advantage_ci_high: float | None
    tpr_at: tuple[TprAt, ...]
    lowest_resolvable_fpr: float
    tpr_at_lowest_fpr: float | None


@dataclass(frozen=True)
class ShiftControl:
    """The attacks re-run with a disjoint real slice of the training population in place of the
    synthetic set; every AUC should hold 0.5."""

    passed: bool
    n_control: int
    n_control_units: int
    level: float
    worst_attack: str
    worst_embedder: str
    worst_auc: float
    worst_ci_low: float | None
    worst_ci_high: float | None


@dataclass(frozen=True)
class ExposedPatient:
    """A training patient (or image, without ids) whose membership score stands out: its
    conformal p-value against the non-member patients' scores is at most ``exposure_share``."""

    train_patient_id: str
    score: float
    p_value: float
    n_images: int
    top_train_id: str


@dataclass(frozen=True, kw_only=True)
class MembershipResult(CheckResult):
    """Result of the ``membership`` check (see the module docstring)."""

    threat_model: str
    unit: str
    embedders: tuple[str, ...]
    attacks: tuple[str, ...]
    n_members: int
    n_nonmembers: int
    n_reference: int
    n_member_units: int
    n_nonmember_units: int
    n_reference_units: int
    lowest_resolvable_fpr: float | None
    headline: Headline | None
    figures: tuple[AttackFigures, ...]
    shift_control: ShiftControl | None
    exposure_share: float
    exposure_resolvable: bool
    exposed_expected_by_chance: float | None
    exposed_patients: tuple[ExposedPatient, ...]


@dataclass
class _Split:
    unit: str
    members: np.ndarray  # training image indices
    member_units: np.ndarray  # unit label per member image
    nonmembers: np.ndarray  # holdout image indices
    nonmember_units: np.ndarray
    reference: np.ndarray  # holdout image indices
    control: np.ndarray  # training image indices
    n_reference_units: int
    n_control_units: int


@CHECKS.register("membership")
class MembershipCheck(Check):
    """Membership inference against the synthetic set, with a population-shift control."""

    name = "membership"
    title = "Membership inference"
    Options = MembershipOptions
    requires = ("train", "synthetic")
    metrics = {
        "auc_risk": MetricSpec(
            "auc_risk",
            Direction.HIGHER_IS_WORSE,
            "ROC AUC of the strongest membership attack (picked on one half of the evaluation patients, measured on "
            "the other); 0.5 is chance; 95 % bootstrap interval over patients",
        ),
        "advantage_risk": MetricSpec(
            "advantage_risk",
            Direction.HIGHER_IS_WORSE,
            "attacker advantage max(TPR - FPR) of that attack on the report half (0: no better than chance)",
        ),
        "low_fpr_tpr_rate": MetricSpec(
            "low_fpr_tpr_rate",
            Direction.HIGHER_IS_WORSE,
            "share of members that attack finds while wrongly accusing at most 1 % of non-members (TPR at FPR 1 %); "
            "not assessed when the sample cannot resolve a 1 % FPR (fewer than 300 non-members)",
        ),
        "shift_control_auc_risk": MetricSpec(
            "shift_control_auc_risk",
            Direction.HIGHER_IS_WORSE,
            "AUC of the attack that strays furthest from 0.5 when a real slice of the training population replaces the "
            "synthetic set (should be 0.5; far from it, the holdout is not like-for-like and the check is not assessed)",
        ),
    }

    def spaces(self, options: MembershipOptions, configured: tuple[str, ...]) -> tuple[str, ...]:
        """The spaces named in the options; by default the audit's spaces that were *not* fitted
        on the training images. A space fitted on them treats them differently from new images:
        the copy-detection descriptor pushes its training images apart (instance
        discrimination), so members sit further from any real set than non-members do (measured
        in the demo: control AUC 0.25 for dcr in copydetect). The shift control would then
        always fail. A space named explicitly is used, and the control still judges it."""
        if options.embedders:
            return options.embedders
        from privaudit.embed import EMBEDDERS, parse_spec

        unfitted = tuple(s for s in configured if not EMBEDDERS.get(parse_spec(s)[0]).requires_fit)
        return unfitted or ("pixels",)

    def run(self, ctx: AuditContext, options: MembershipOptions) -> MembershipResult:
        specs = self.spaces(options, ctx.configured)
        warnings: list[str] = []
        empty = dict(
            threat_model=THREAT_MODEL, embedders=tuple(specs), attacks=tuple(options.attacks), headline=None, figures=(),
            shift_control=None, exposure_share=options.exposure_share, exposed_patients=(), lowest_resolvable_fpr=None,
            exposure_resolvable=False, exposed_expected_by_chance=None,
        )
        if ctx.holdout is None:
            return self._not_assessed("no holdout was given: without real non-members there is nothing to tell members from", empty, warnings)
        ids_ok = ctx.train.patient_ids is not None and ctx.holdout.patient_ids is not None
        if not ids_ok and options.require_patient_ids:
            return self._not_assessed(
                "patient ids are missing for training or holdout, so the splits cannot keep a patient's scans together "
                "(set membership.require_patient_ids = false to run on images, with that caveat)",
                empty,
                warnings,
            )
        if not ids_ok:
            warnings.append(
                "patient ids are missing: splits are by image, so one patient's scans can fall on both sides; "
                "intervals are too narrow and the calibrated attacks can read a non-member's own other scan"
            )
        split = _make_split(ctx, options, ids_ok)
        n_units = len(np.unique(split.member_units))
        if n_units < options.min_units:
            unit = "patients" if ids_ok else "images"
            return self._not_assessed(
                f"only {n_units} {unit} per side can be evaluated (half the training {unit} and half the holdout {unit}), "
                f"below min_units = {options.min_units}; give a larger holdout or training set",
                empty | {"unit": split.unit},
                warnings,
                split,
            )

        rng = ctx.rng("membership")
        member_groups = _group_index(split.member_units)
        nonmember_groups = _group_index(split.nonmember_units)
        boot_m = _boot_weights(member_groups, options.bootstrap, rng)
        boot_n = _boot_weights(nonmember_groups, options.bootstrap, rng)
        # Selection / report halves, by unit.
        sel_m = _half(member_groups, rng)
        sel_n = _half(nonmember_groups, rng)

        scores: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        figures = []
        k_tests = len(specs) * len(options.attacks)
        level = 0.05 / k_tests
        worst: tuple[float, AttackFigures] | None = None
        for spec in specs:
            space = ctx.space_of(spec)
            train_v, hold_v = space.train, space.holdout
            data = AttackData(synthetic=space.synthetic, reference=np.ascontiguousarray(hold_v[split.reference]))
            control = AttackData(synthetic=np.ascontiguousarray(train_v[split.control]), reference=data.reference, searches=data.searches)
            targets = np.concatenate([train_v[split.members], hold_v[split.nonmembers]])
            nm = len(split.members)
            for name in options.attacks:
                attack = ATTACKS.get(name)
                s = attack(targets, data, options)
                c = attack(targets, control, options)
                pos, neg = s[:nm], s[nm:]
                scores[(name, spec)] = (pos, neg)
                fig = _figures(name, spec, pos, neg, c[:nm], c[nm:], boot_m, boot_n, level, member_groups, nonmember_groups)
                figures.append(fig)
                if fig.control_auc is not None:
                    dev = abs(fig.control_auc - 0.5)
                    if worst is None or dev > worst[0]:
                        worst = (dev, fig)

        control_passed = True
        shift = None
        if worst is not None:
            fig = worst[1]
            excludes = fig.control_ci_low is not None and (fig.control_ci_low > 0.5 or fig.control_ci_high < 0.5)  # type: ignore[operator]
            control_passed = not (excludes and worst[0] > options.shift_tolerance)
            shift = ShiftControl(
                passed=control_passed, n_control=len(split.control), n_control_units=split.n_control_units, level=1 - level,
                worst_attack=fig.attack, worst_embedder=fig.embedder, worst_auc=float(fig.control_auc),  # type: ignore[arg-type]
                worst_ci_low=fig.control_ci_low, worst_ci_high=fig.control_ci_high,
            )

        headline = _headline(scores, sel_m, sel_n, member_groups, nonmember_groups, options, rng)
        exposed = _exposed(ctx, split, headline, scores, options, ids_ok) if headline is not None else ()
        n_null_units = len(np.unique(split.nonmember_units))
        resolvable = 1.0 / (n_null_units + 1) <= options.exposure_share + 1e-12
        if not resolvable:
            warnings.append(
                f"with {n_null_units} non-member {split.unit}s, no training {split.unit} can be shown to score above "
                f"{1 - options.exposure_share:.0%} of them (that needs at least {math.ceil(1 / options.exposure_share) - 1}); "
                "the per-patient membership column is empty"
            )
        common = dict(
            threat_model=THREAT_MODEL, unit=split.unit, embedders=tuple(specs), attacks=tuple(options.attacks),
            n_members=len(split.members), n_nonmembers=len(split.nonmembers), n_reference=len(split.reference),
            n_member_units=n_units, n_nonmember_units=len(np.unique(split.nonmember_units)), n_reference_units=split.n_reference_units,
            lowest_resolvable_fpr=lowest_resolvable_fpr(len(split.nonmembers)), headline=headline, figures=tuple(figures),
            shift_control=shift, exposure_share=options.exposure_share, exposed_patients=exposed,
            exposure_resolvable=resolvable, exposed_expected_by_chance=options.exposure_share * len(np.unique(_units(ctx.train.patient_ids, len(ctx.train), ids_ok))) if resolvable else None,
        )
        metrics = _metrics(headline, shift)
        if headline is None:
            reason = "no attack gave a score on this data (degenerate embeddings)"
            return MembershipResult(check=self.name, status=CheckStatus.NOT_ASSESSED, reason=reason, metrics=metrics,
                                    warnings=tuple(warnings), summary=f"Membership inference could not be assessed: {reason}.", **common)
        if not control_passed:
            reason = (
                f"the shift control failed: with a real slice of the training population in place of the synthetic set, "
                f"{shift.worst_attack} in {shift.worst_embedder} still separates members from non-members (AUC "  # type: ignore[union-attr]
                f"{shift.worst_auc:.3f}, should be 0.5), so the holdout is not like-for-like with training and cannot serve "  # type: ignore[union-attr]
                "as the non-member population"
            )
            warnings.insert(0, reason)
            return MembershipResult(check=self.name, status=CheckStatus.NOT_ASSESSED, reason=reason, metrics=metrics,
                                    warnings=tuple(warnings), summary=f"Membership inference was not assessed: {reason}.", **common)
        return MembershipResult(check=self.name, status=CheckStatus.ASSESSED, reason=None, metrics=metrics,
                                warnings=tuple(warnings), summary=_summary(headline, shift, exposed, options), **common)

    def _not_assessed(self, reason: str, fields: dict[str, Any], warnings: list[str], split: _Split | None = None) -> MembershipResult:
        base = dict(
            unit=fields.pop("unit", "patient"), n_members=0, n_nonmembers=0, n_reference=0, n_member_units=0, n_nonmember_units=0,
            n_reference_units=0,
        )
        if split is not None:
            base.update(n_members=len(split.members), n_nonmembers=len(split.nonmembers), n_reference=len(split.reference),
                        n_member_units=len(np.unique(split.member_units)), n_nonmember_units=len(np.unique(split.nonmember_units)),
                        n_reference_units=split.n_reference_units)
        return MembershipResult(
            check=self.name, status=CheckStatus.NOT_ASSESSED, reason=reason,
            metrics={m: Metric(None, 0, direction=spec.direction) for m, spec in self.metrics.items()},
            warnings=tuple(warnings), summary=f"Membership inference was not assessed: {reason}.", **base, **fields,
        )


# ---------------------------------------------------------------- splits


def _units(ids: tuple[str, ...] | None, n: int, by_patient: bool) -> np.ndarray:
    if by_patient and ids is not None:
        return np.asarray(ids)
    return np.arange(n).astype(str)


def _make_split(ctx: AuditContext, options: MembershipOptions, by_patient: bool) -> _Split:
    rng = ctx.rng("membership/split")
    holdout = ctx.holdout
    assert holdout is not None
    t_units = _units(ctx.train.patient_ids, len(ctx.train), by_patient)
    h_units = _units(holdout.patient_ids, len(holdout), by_patient)
    t_order = rng.permutation(np.unique(t_units))
    h_order = rng.permutation(np.unique(h_units))
    n = int(min(len(t_order) // 2, len(h_order) // 2, options.max_units))
    member_set, nonmember_set = set(t_order[:n].tolist()), set(h_order[:n].tolist())
    members = np.flatnonzero([u in member_set for u in t_units])
    control = np.flatnonzero([u not in member_set for u in t_units])
    nonmembers = np.flatnonzero([u in nonmember_set for u in h_units])
    reference = np.flatnonzero([u not in nonmember_set for u in h_units])
    return _Split(
        unit="patient" if by_patient else "image",
        members=members, member_units=t_units[members], nonmembers=nonmembers, nonmember_units=h_units[nonmembers],
        reference=reference, control=control, n_reference_units=len(h_order) - n, n_control_units=len(t_order) - n,
    )


def _group_index(units: np.ndarray) -> np.ndarray:
    """Each image's unit as an integer 0..g-1."""
    return np.unique(units, return_inverse=True)[1]


def _boot_weights(groups: np.ndarray, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """``(replicates, n_images)`` weights: how often each image's unit was drawn in a bootstrap
    over units (patients), so that a replicate is a weighted statistic, not a copied array."""
    g = int(groups.max()) + 1 if groups.size else 0
    if replicates == 0 or g == 0:
        return np.zeros((0, groups.size))
    draws = rng.multinomial(g, np.full(g, 1.0 / g), size=replicates)  # (B, g)
    return draws[:, groups].astype(np.float64)


def _half(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask: images of a random half of the units (the selection half)."""
    g = int(groups.max()) + 1
    chosen = rng.permutation(g)[: g // 2]
    mask = np.zeros(g, dtype=bool)
    mask[chosen] = True
    return mask[groups]


# ---------------------------------------------------------------- figures


def _interval(values: np.ndarray) -> tuple[float | None, float | None]:
    values = values[np.isfinite(values)]
    if values.size < 10:
        return None, None
    lo, hi = np.quantile(values, [0.025, 0.975])
    return float(lo), float(hi)


def _tpr_list(pos: np.ndarray, neg: np.ndarray) -> tuple[TprAt, ...]:
    out = []
    for f in FPR_LEVELS:
        t = tpr_at_fpr(pos, neg, f)
        out.append(TprAt(fpr=f, tpr=None if math.isnan(t) else t, resolvable=not math.isnan(t)))
    return tuple(out)


def _figures(
    name: str, spec: str, pos: np.ndarray, neg: np.ndarray, c_pos: np.ndarray, c_neg: np.ndarray,
    boot_m: np.ndarray, boot_n: np.ndarray, level: float, groups_m: np.ndarray, groups_n: np.ndarray,
) -> AttackFigures:
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(neg))):
        return AttackFigures(name, spec, None, None, None, None, (), (), (), None, None, None)
    auc = roc_auc(pos, neg)
    boot = np.array([weighted_auc(pos, neg, wm, wn) for wm, wn in zip(boot_m, boot_n)])
    lo, hi = _interval(boot)
    fpr, tpr, _ = roc_points(pos, neg)
    rf, rt = thin_roc(fpr, tpr)
    control_auc = c_lo = c_hi = None
    if np.all(np.isfinite(c_pos)) and np.all(np.isfinite(c_neg)):
        control_auc = roc_auc(c_pos, c_neg)
        cb = np.array([weighted_auc(c_pos, c_neg, wm, wn) for wm, wn in zip(boot_m, boot_n)])
        cb = cb[np.isfinite(cb)]
        if cb.size >= 10:
            # Normal interval from the bootstrap's standard deviation: at a Bonferroni level such as
            # 99.4 %, percentile tails of a few hundred replicates rest on one or two of them.
            from scipy.stats import norm

            half = float(norm.ppf(1 - level / 2)) * float(cb.std(ddof=1))
            c_lo, c_hi = control_auc - half, control_auc + half
    return AttackFigures(
        attack=name, embedder=spec, auc=auc, auc_ci_low=lo, auc_ci_high=hi, advantage=attacker_advantage(pos, neg),
        tpr_at=_tpr_list(pos, neg), roc_fpr=tuple(rf), roc_tpr=tuple(rt), control_auc=control_auc, control_ci_low=c_lo, control_ci_high=c_hi,
    )


def _headline(
    scores: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]], sel_m: np.ndarray, sel_n: np.ndarray,
    groups_m: np.ndarray, groups_n: np.ndarray, options: MembershipOptions, rng: np.random.Generator,
) -> Headline | None:
    best = None
    for key, (pos, neg) in scores.items():
        if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(neg))):
            continue
        a = roc_auc(pos[sel_m], neg[sel_n])
        if best is None or a > best[0] + 1e-12:
            best = (a, key)
    if best is None:
        return None
    (attack, spec), (pos, neg) = best[1], scores[best[1]]
    rp, rn = pos[~sel_m], neg[~sel_n]
    gm, gn = _group_index(groups_m[~sel_m].astype(str)), _group_index(groups_n[~sel_n].astype(str))
    wm, wn = _boot_weights(gm, options.bootstrap, rng), _boot_weights(gn, options.bootstrap, rng)
    aucs = np.array([weighted_auc(rp, rn, a, b) for a, b in zip(wm, wn)])
    advs = np.array([_weighted_advantage(rp, rn, a, b) for a, b in zip(wm, wn)])
    lo, hi = _interval(aucs)
    alo, ahi = _interval(advs)
    low = lowest_resolvable_fpr(len(rn))
    t_low = tpr_at_fpr(rp, rn, low) if math.isfinite(low) else math.nan
    return Headline(
        attack=attack, embedder=spec, selection_auc=float(best[0]), n_members=len(rp), n_nonmembers=len(rn),
        n_member_units=int(gm.max()) + 1, n_nonmember_units=int(gn.max()) + 1, auc=roc_auc(rp, rn), auc_ci_low=lo, auc_ci_high=hi,
        advantage=attacker_advantage(rp, rn), advantage_ci_low=alo, advantage_ci_high=ahi, tpr_at=_tpr_list(rp, rn),
        lowest_resolvable_fpr=low, tpr_at_lowest_fpr=None if math.isnan(t_low) else float(t_low),
    )


def _weighted_advantage(pos: np.ndarray, neg: np.ndarray, wp: np.ndarray, wn: np.ndarray) -> float:
    """``max_t (TPR - FPR)`` with weights per score (a bootstrap replicate)."""
    if wp.sum() <= 0 or wn.sum() <= 0:
        return math.nan
    thresholds = np.unique(np.concatenate([pos, neg]))
    op, on = np.argsort(pos), np.argsort(neg)
    cp = np.concatenate([[0.0], np.cumsum(wp[op])])
    cn = np.concatenate([[0.0], np.cumsum(wn[on])])
    tp = cp[-1] - cp[np.searchsorted(pos[op], thresholds, side="left")]
    fp = cn[-1] - cn[np.searchsorted(neg[on], thresholds, side="left")]
    return float(max(0.0, (tp / cp[-1] - fp / cn[-1]).max()))


def _metrics(headline: Headline | None, shift: ShiftControl | None) -> dict[str, Metric]:
    if headline is None:
        return {m: Metric(None, 0, direction=spec.direction) for m, spec in MembershipCheck.metrics.items()}
    n = headline.n_members + headline.n_nonmembers
    one = next(t for t in headline.tpr_at if t.fpr == 0.01)
    if one.tpr is not None:
        from privaudit.stats import clopper_pearson

        k = int(round(one.tpr * headline.n_members))
        lo, hi = clopper_pearson(k, headline.n_members)
        low_fpr = Metric(one.tpr, headline.n_members, lo, hi)
    else:
        low_fpr = Metric(None, headline.n_members)
    control = Metric(None, 0)
    if shift is not None:
        control = Metric(shift.worst_auc, n, shift.worst_ci_low, shift.worst_ci_high)
    return {
        "auc_risk": Metric(headline.auc, n, headline.auc_ci_low, headline.auc_ci_high),
        "advantage_risk": Metric(headline.advantage, n, headline.advantage_ci_low, headline.advantage_ci_high),
        "low_fpr_tpr_rate": low_fpr,
        "shift_control_auc_risk": control,
    }


def _exposed(
    ctx: AuditContext, split: _Split, headline: Headline, scores: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    options: MembershipOptions, by_patient: bool,
) -> tuple[ExposedPatient, ...]:
    """Every training patient's membership score under the headline attack (its highest-scoring
    scan), against the non-member patients' scores (conformal p-value); those at or below
    ``exposure_share``, most exposed first (at most 100). With ``n`` non-member patients nothing
    below ``1 / (n + 1)`` can be shown; a patient is listed by chance with probability at most
    ``exposure_share``, so about ``exposure_share`` x training patients are expected by chance."""
    space = ctx.space_of(headline.embedder)
    holdout = ctx.holdout
    assert holdout is not None
    data = AttackData(synthetic=space.synthetic, reference=np.ascontiguousarray(space.holdout[split.reference]))  # type: ignore[index]
    train_scores = ATTACKS.get(headline.attack)(space.train, data, options)
    _, neg = scores[(headline.attack, headline.embedder)]
    # Non-member units' highest scores: the same statistic as a patient's.
    neg_units: dict[str, float] = {}
    for u, s in zip(split.nonmember_units.tolist(), neg.tolist()):
        neg_units[u] = max(s, neg_units.get(u, -math.inf))
    null = np.sort(np.array(list(neg_units.values())))
    t_units = _units(ctx.train.patient_ids, len(ctx.train), by_patient)
    best: dict[str, tuple[float, int, int]] = {}
    for i, (u, s) in enumerate(zip(t_units.tolist(), train_scores.tolist())):
        cur = best.get(u)
        count = (cur[2] if cur else 0) + 1
        if cur is None or s > cur[0]:
            best[u] = (s, i, count)
        else:
            best[u] = (cur[0], cur[1], count)
    rows = []
    for u, (s, i, count) in best.items():
        # A conformal p-value against the non-member patients: the share of them (counting
        # the patient itself) scoring at least as high.
        share = float((1 + null.size - np.searchsorted(null, s, side="left")) / (null.size + 1))
        if share <= options.exposure_share + 1e-12:
            rows.append(ExposedPatient(train_patient_id=u if by_patient else ctx.train.ids[i], score=float(s), p_value=share,
                                       n_images=count, top_train_id=ctx.train.ids[i]))
    rows.sort(key=lambda r: (r.p_value, -r.score))
    return tuple(rows[:100])


def _summary(h: Headline, shift: ShiftControl | None, exposed: tuple[ExposedPatient, ...], options: MembershipOptions) -> str:
    ci = f" (95% CI {h.auc_ci_low:.2f} to {h.auc_ci_high:.2f})" if h.auc_ci_low is not None else ""
    text = (
        f"The strongest membership attack ({h.attack} in {h.embedder}) tells training patients from new ones with an AUC of "
        f"{h.auc:.2f}{ci} on {h.n_member_units} + {h.n_nonmember_units} patients it was not picked on (0.5 is chance)."
    )
    t = next((x for x in h.tpr_at if x.fpr == 0.01), None)
    if t is not None and t.tpr is not None:
        text += f" At 1% false accusations it finds {t.tpr:.0%} of members."
    if exposed:
        text += f" {len(exposed)} training patient(s) score above {1 - options.exposure_share:.0%} of non-members."
    if shift is not None:
        text += f" The population-shift control held (AUC {shift.worst_auc:.2f} at worst)."
    return text
