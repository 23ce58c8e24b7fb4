"""``reid``: can a synthetic image be linked to a training patient?

A chest radiograph identifies its patient (Packhäuser et al., Scientific Reports 2022). A
synthetic image that is not a copy of any training scan can still be a new scan *of a training
patient*: the generator learned that person's anatomy. This check looks for such links with an
identity probe, an embedding fitted on the training images' patient ids (the ``identity``
embedder, :mod:`privaudit.embed.identity`).

**Probe power first.** A probe that cannot re-identify real scans cannot clear a synthetic set
(Koeken et al. 2025). Its power is measured on the holdout — patients the probe never saw —
before anything else: the verification AUC (same-patient pairs of holdout scans against
different-patient pairs, with a bootstrap interval over patients) and the top-1 retrieval
accuracy (a holdout scan's most similar other holdout scan is of the same patient). Below
``min_probe_auc`` the check is "not assessed", with that reason, never a pass.

**Linkage.** For each synthetic image, its most similar training image in the identity space,
and that image's patient. The score is relative to real non-members, as in the copies check:
``log((1 - s_ref) / (1 - s_train))`` for the similarity to the nearest training image and to the
nearest holdout image. The null is the same score of holdout images — patients not in
training — against training, each with the holdout images of *other* patients as its reference
(leave-one-patient-out). A conformal p-value per synthetic image (Bates et al. 2023), and
Benjamini–Hochberg at FDR ``q`` over the synthetic set, with the same detection floor as the
copies check (:func:`privaudit.stats.bh_detection_floor`).

**Reported.** The linkage rate with its Clopper–Pearson interval and floor, the number of
distinct training patients exposed, and the most exposed patients with their evidence images.

Without patient ids on the training set (nothing to link to, no probe to fit) or on the holdout
(no power, no leave-one-patient-out null), the check is "not assessed".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from privaudit.checks.base import CHECKS, AuditContext, Check, CheckResult, CheckStatus, Direction, Metric, MetricSpec
from privaudit.errors import ConfigError
from privaudit.search import knn_excluding_self
from privaudit.stats import (
    benjamini_hochberg,
    bh_detection_floor,
    clopper_pearson,
    conformal_pvalues,
    weighted_auc,
)

#: Most exposed patients listed (all links are counted), and evidence images per patient.
MAX_PATIENTS = 50
MAX_EVIDENCE = 5


@dataclass(frozen=True)
class ReidOptions:
    """Options of the ``reid`` check.

    Attributes:
        embedder: the identity space (an embedder fitted on training patient ids).
        fdr: the false discovery rate ``q`` of the links (Benjamini–Hochberg).
        min_probe_auc: the probe's verification AUC on held-out patients below which the check
            is not assessed (Packhäuser et al. report 0.994 for a probe trained on 30,000
            patients; privaudit's closed-form probe reaches about 0.91 on 67 COVID-19 patients).
        min_power_patients: fewest holdout patients with two or more scans to measure power on.
        max_negative_pairs: different-patient pairs sampled for the verification AUC.
        bootstrap: replicates of the patient bootstrap of the verification AUC.
    """

    embedder: str = "identity"
    fdr: float = 0.05
    min_probe_auc: float = 0.9
    min_power_patients: int = 10
    max_negative_pairs: int = 20000
    bootstrap: int = 200

    def __post_init__(self) -> None:
        if not 0.0 < self.fdr < 1.0:
            raise ConfigError(f"reid.fdr must lie in (0, 1); got {self.fdr}")
        if not 0.5 <= self.min_probe_auc <= 1.0:
            raise ConfigError(f"reid.min_probe_auc must lie in [0.5, 1]; got {self.min_probe_auc}")
        if self.min_power_patients < 2:
            raise ConfigError(f"reid.min_power_patients must be at least 2; got {self.min_power_patients}")
        if self.max_negative_pairs < 100:
            raise ConfigError(f"reid.max_negative_pairs must be at least 100; got {self.max_negative_pairs}")
        if self.bootstrap < 0:
            raise ConfigError(f"reid.bootstrap must be >= 0; got {self.bootstrap}")


@dataclass(frozen=True)
class ProbePower:
    """How well the probe re-identifies real patients it never saw (the holdout)."""

    verification_auc: float | None
    auc_ci_low: float | None
    auc_ci_high: float | None
    n_patients: int
    n_positive_pairs: int
    n_negative_pairs: int
    top1_accuracy: float | None
    n_queries: int
    threshold: float


@dataclass(frozen=True)
class Link:
    """A synthetic image linked to a training patient."""

    synthetic_id: str
    train_id: str
    similarity: float
    p_value: float


@dataclass(frozen=True)
class ExposedTrainPatient:
    """A training patient that synthetic images were linked to, with the evidence."""

    train_patient_id: str
    n_linked: int
    best_p_value: float
    evidence: tuple[Link, ...]


@dataclass(frozen=True, kw_only=True)
class ReidResult(CheckResult):
    """Result of the ``reid`` check (see the module docstring)."""

    embedder: str
    probe_note: str | None
    power: ProbePower | None
    fdr: float
    n_synthetic: int
    n_null: int
    n_null_patients: int
    n_linked: int
    detection_floor: int | None
    n_patients_exposed: int
    n_train_patients: int | None
    patients: tuple[ExposedTrainPatient, ...]


@CHECKS.register("reid")
class ReidCheck(Check):
    """Links synthetic images to training patients with an identity probe whose power is measured first."""

    name = "reid"
    title = "Patient re-identification"
    Options = ReidOptions
    metrics = {
        "probe_auc_score": MetricSpec(
            "probe_auc_score",
            Direction.HIGHER_IS_BETTER,
            "verification AUC of the identity probe on held-out patients (same-patient pairs against different-patient "
            "pairs; 95 % bootstrap interval over patients): its power to re-identify",
        ),
        "probe_top1_score": MetricSpec(
            "probe_top1_score",
            Direction.HIGHER_IS_BETTER,
            "share of held-out scans whose most similar other held-out scan is of the same patient (top-1 retrieval)",
        ),
        "linkage_rate": MetricSpec(
            "linkage_rate",
            Direction.HIGHER_IS_WORSE,
            "share of synthetic images linked to a training patient at FDR q (Clopper-Pearson interval); its floor is "
            "the fewest links the null lets the method make, over n",
        ),
        "exposed_patient_rate": MetricSpec(
            "exposed_patient_rate",
            Direction.HIGHER_IS_WORSE,
            "share of training patients that at least one synthetic image was linked to",
        ),
    }

    def spaces(self, options: ReidOptions, configured: tuple[str, ...]) -> tuple[str, ...]:
        return (options.embedder,)

    def run(self, ctx: AuditContext, options: ReidOptions) -> ReidResult:
        space = ctx.space_of(options.embedder)
        probe_note = getattr(space.embedder, "fit_note", None)
        m = len(ctx.synthetic)
        n_train_patients = ctx.train.n_patients
        base = dict(embedder=options.embedder, probe_note=probe_note, fdr=options.fdr, n_synthetic=m, n_train_patients=n_train_patients)
        if ctx.train.patient_ids is None:
            return self._not_assessed("the training set has no patient ids: there is no patient to link to and no identity probe to fit", base)
        if ctx.holdout is None:
            return self._not_assessed("no holdout was given: the probe's power and the null need real patients not in training", base)
        if ctx.holdout.patient_ids is None:
            return self._not_assessed("the holdout has no patient ids: the probe's power cannot be measured and the null cannot leave a patient out", base)
        if probe_note is not None:
            return self._not_assessed(f"the identity probe could not learn a patient metric ({probe_note})", base)

        hold_pids = np.asarray(ctx.holdout.patient_ids)
        power = probe_power(space.holdout, hold_pids, options, ctx.rng("reid/power"))  # type: ignore[arg-type]
        base["power"] = power
        if power.n_patients < options.min_power_patients or power.verification_auc is None:
            return self._not_assessed(
                f"only {power.n_patients} holdout patient(s) have two or more scans; the probe's power needs at least "
                f"{options.min_power_patients}", base,
            )
        if power.verification_auc < options.min_probe_auc:
            return self._not_assessed(
                f"the identity probe re-identifies held-out patients with a verification AUC of {power.verification_auc:.3f} "
                f"(top-1 {power.top1_accuracy:.0%}), below the {options.min_probe_auc:g} it needs; a probe that cannot "
                "re-identify real scans cannot clear a synthetic set", base,
            )

        # Linkage scores (see the module docstring): ratio of distances to real non-members and to training.
        # Through the audit context: a check that asks the same search in the same space (copies,
        # when reid runs in one of its spaces) shares it.
        syn_nb = ctx.neighbors("synthetic", "train", k=1, embedder=options.embedder)
        s_train = syn_nb.similarities[:, 0].astype(np.float64)
        s_ref = ctx.neighbors("synthetic", "holdout", k=1, embedder=options.embedder).similarities[:, 0].astype(np.float64)
        n_train = ctx.neighbors("holdout", "train", k=1, embedder=options.embedder).similarities[:, 0].astype(np.float64)
        n_ref = knn_excluding_self(space.holdout, k=1, groups=hold_pids).similarities[:, 0].astype(np.float64)  # type: ignore[arg-type]
        keep = np.isfinite(n_ref)  # a holdout of one patient has no other-patient reference
        syn_score = _ratio(s_train, s_ref)
        null = _ratio(n_train[keep], n_ref[keep])
        n_null = int(keep.sum())
        base.update(n_null=n_null, n_null_patients=len(set(hold_pids[keep].tolist())))
        if n_null == 0 or bh_detection_floor(m, n_null, options.fdr) > m:
            return self._not_assessed(
                f"the null holds {n_null} scores: even if every synthetic image were linked, BH at FDR {options.fdr:g} could "
                f"not flag them ({m} images need a null of at least {math.ceil(1 / options.fdr) - 1})", base,
            )
        p = conformal_pvalues(syn_score, null)
        linked = benjamini_hochberg(p, options.fdr)
        floor = bh_detection_floor(m, n_null, options.fdr)
        k = int(linked.sum())
        train_pids = ctx.train.patient_ids
        by_patient: dict[str, list[Link]] = {}
        for i in np.flatnonzero(linked):
            j = int(syn_nb.indices[i, 0])
            by_patient.setdefault(train_pids[j], []).append(Link(ctx.synthetic.ids[i], ctx.train.ids[j], float(s_train[i]), float(p[i])))
        exposed = [
            ExposedTrainPatient(pid, len(links), min(x.p_value for x in links), tuple(sorted(links, key=lambda x: (x.p_value, -x.similarity))[:MAX_EVIDENCE]))
            for pid, links in by_patient.items()
        ]
        exposed.sort(key=lambda e: (-e.n_linked, e.best_p_value, e.train_patient_id))
        lo, hi = clopper_pearson(k, m)
        n_tp = n_train_patients or 0
        elo, ehi = clopper_pearson(len(exposed), n_tp) if n_tp else (None, None)
        metrics = _power_metrics(power)
        metrics["linkage_rate"] = Metric(k / m, m, lo, hi, floor=floor / m)
        metrics["exposed_patient_rate"] = Metric(len(exposed) / n_tp if n_tp else None, n_tp, elo, ehi)
        warnings = []
        if floor > 1:
            warnings.append(
                f"Detection floor: with {n_null} null scores, {m} synthetic images and FDR {options.fdr:g}, BH can only link "
                f"images when there are at least {floor} of them ({floor / m:.1%} of the set)."
            )
        summary = (
            f"{k} of {m} synthetic images ({k / m:.1%}) are linked to a training patient at a false discovery rate of "
            f"{options.fdr:.0%}, exposing {len(exposed)} of {n_tp} training patients. The identity probe re-identifies "
            f"held-out patients with a verification AUC of {power.verification_auc:.3f}."
        )
        return ReidResult(
            check=self.name, status=CheckStatus.ASSESSED, reason=None, metrics=metrics, warnings=tuple(warnings), summary=summary,
            n_linked=k, detection_floor=floor, n_patients_exposed=len(exposed), patients=tuple(exposed[:MAX_PATIENTS]), **base,  # type: ignore[arg-type]
        )

    def _not_assessed(self, reason: str, base: dict) -> ReidResult:
        power = base.pop("power", None)
        metrics = {name: Metric(None, 0, direction=spec.direction) for name, spec in self.metrics.items()}
        if power is not None:
            metrics.update(_power_metrics(power))
        return ReidResult(
            check=self.name, status=CheckStatus.NOT_ASSESSED, reason=reason, metrics=metrics,
            summary=f"Patient re-identification was not assessed: {reason}.",
            power=power, n_null=base.pop("n_null", 0), n_null_patients=base.pop("n_null_patients", 0), n_linked=0,
            detection_floor=None, n_patients_exposed=0, patients=(), **base,
        )


def _ratio(s_train: np.ndarray, s_ref: np.ndarray) -> np.ndarray:
    from privaudit.checks.copies import score_against

    return score_against(s_train, s_ref, "ratio")


def _power_metrics(power: ProbePower) -> dict[str, Metric]:
    better = Direction.HIGHER_IS_BETTER
    out = {"probe_auc_score": Metric(power.verification_auc, power.n_patients, power.auc_ci_low, power.auc_ci_high, direction=better)}
    if power.top1_accuracy is not None and power.n_queries:
        hits = int(round(power.top1_accuracy * power.n_queries))
        lo, hi = clopper_pearson(hits, power.n_queries)
        out["probe_top1_score"] = Metric(power.top1_accuracy, power.n_queries, lo, hi, direction=better)
    else:
        out["probe_top1_score"] = Metric(None, 0, direction=better)
    return out


def probe_power(vectors: np.ndarray, patient_ids: np.ndarray, options: ReidOptions, rng: np.random.Generator) -> ProbePower:
    """Verification AUC and top-1 retrieval of unit ``vectors`` labelled by ``patient_ids``.

    Every same-patient pair is a positive; different-patient pairs are sampled (at most
    ``max_negative_pairs``, seeded). The interval is a bootstrap over patients: a replicate
    draws patients with replacement and weights each pair by how often its patients were drawn.
    Top-1: each scan of a patient with two or more scans, against every other scan.
    """
    pids = np.asarray(patient_ids)
    _, g = np.unique(pids, return_inverse=True)
    counts = np.bincount(g)
    multi = counts[g] >= 2
    n_patients = int((counts >= 2).sum())
    nothing = ProbePower(None, None, None, n_patients, 0, 0, None, int(multi.sum()), options.min_probe_auc)
    if n_patients < 1 or len(pids) < 3:
        return nothing
    rows = np.flatnonzero(multi)
    pa, pb = [], []
    for p in np.flatnonzero(counts >= 2):
        idx = np.flatnonzero(g == p)
        a, b = np.triu_indices(len(idx), 1)
        pa.append(idx[a])
        pb.append(idx[b])
    pos_a, pos_b = np.concatenate(pa), np.concatenate(pb)
    n = len(pids)
    want = options.max_negative_pairs
    na = rng.integers(0, n, size=3 * want)
    nb = rng.integers(0, n, size=3 * want)
    ok = g[na] != g[nb]
    na, nb = na[ok][:want], nb[ok][:want]
    pos = np.einsum("ij,ij->i", vectors[pos_a], vectors[pos_b]).astype(np.float64)
    neg = np.einsum("ij,ij->i", vectors[na], vectors[nb]).astype(np.float64)
    auc = weighted_auc(pos, neg)
    lo = hi = None
    if options.bootstrap:
        n_groups = int(g.max()) + 1
        draws = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=options.bootstrap)
        boots = []
        for w in draws:
            wp = w[g[pos_a]].astype(np.float64)  # a positive pair belongs to one patient
            wn = (w[g[na]] * w[g[nb]]).astype(np.float64)
            boots.append(weighted_auc(pos, neg, wp, wn))
        b = np.array(boots)
        b = b[np.isfinite(b)]
        if b.size >= 10:
            lo, hi = (float(v) for v in np.quantile(b, [0.025, 0.975]))
    nbrs = knn_excluding_self(vectors, k=1)
    top1 = float(np.mean(g[nbrs.indices[rows, 0]] == g[rows])) if rows.size else None
    return ProbePower(float(auc), lo, hi, n_patients, len(pos), len(neg), top1, int(rows.size), options.min_probe_auc)
