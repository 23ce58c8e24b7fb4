"""``dp-sweep``: train a reference generator at several privacy budgets and audit each.

For each ε of the sweep (``inf``: the same training without DP), one generator is trained on
the same training set (:mod:`privaudit.dp.train`), samples a synthetic set, and that set goes
through the normal audit (:func:`privaudit.pipeline.audit`) with the same holdout, embedders and
checks as any audit: whatever checks are registered and configured run, so every check joins
the curve without the sweep naming it. The one-run audit of the DP guarantee
(:mod:`privaudit.dp.empirical`) scores the canaries with each trained generator.

Outputs in ``out`` (see the README, "DP sweep"):

* ``dp_results.json``: the sweep's versioned result (schema ``schemas/dp_sweep.schema.json``),
  rewritten atomically after every point, so it always describes the finished points;
* ``dp_report.html``: the trade-off curves and the ε table;
* ``points/<name>/``: per point, the audit's ``results.json`` and ``report.html``, the
  generator's weights (``generator.pt``), its synthetic set (``synthetic.npz``) and ``point.json``, written last, which marks the
  point as done. A re-run with the same settings into the same folder skips done points.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from privaudit._util import atomic_write_bytes, atomic_write_text, dumps_json, to_jsonable
from privaudit._version import __version__
from privaudit.config import AuditConfig
from privaudit.data.imageset import ImageSet
from privaudit.dp.generators import GENERATORS, VAEOptions, n_parameters
from privaudit.dp.train import TrainOptions
from privaudit.errors import ConfigError, InputError, OutputError

log = logging.getLogger(__name__)

#: Version of the ``dp_results.json`` layout (major: a field removed or changed meaning; minor:
#: fields added).
DP_SCHEMA_VERSION = "1.0.0"
RESULTS_FILE = "dp_results.json"
REPORT_FILE = "dp_report.html"
STATE_FILE = "dp_sweep_state.json"

ProgressFn = Callable[[str], None]


def parse_epsilons(text: str) -> tuple[float, ...]:
    """``"1,3,10,inf"`` -> ``(1.0, 3.0, 10.0, inf)``; one-line errors for anything else."""
    values = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        try:
            value = math.inf if part in ("inf", "infinity") else float(part)
        except ValueError:
            raise ConfigError(f"--epsilons: {part!r} is not a number or 'inf' (e.g. --epsilons 1,3,10,inf)") from None
        values.append(value)
    return _check_epsilons(tuple(values))


def _check_epsilons(values: Sequence[float]) -> tuple[float, ...]:
    if not values:
        raise ConfigError("--epsilons: give at least one value (e.g. 1,3,10,inf)")
    for v in values:
        if math.isnan(v) or v <= 0:
            raise ConfigError(f"--epsilons: every ε must be positive (or inf); got {v:g}")
    if len(set(values)) != len(values):
        raise ConfigError(f"--epsilons: a value is listed twice in {', '.join(f'{v:g}' for v in values)}")
    return tuple(sorted(values))


def point_name(epsilon: float) -> str:
    """The folder name of a point: ``eps_1``, ``eps_0.5``, ``eps_inf``."""
    return "eps_inf" if math.isinf(epsilon) else f"eps_{epsilon:g}"


@dataclass(frozen=True)
class SweepConfig:
    """Everything that determines a sweep's figures.

    Attributes:
        epsilons: target ε values; ``inf`` trains the same generator without DP.
        delta: the δ of every guarantee; ``None`` means ``1 / (10 N)`` for N training images.
        generator: the registered generator (see :data:`privaudit.dp.GENERATORS`).
        generator_options: its options (``VAEOptions`` for ``vae``).
        train: how every generator is trained (epochs, batch size, clipping norm, accountant).
        size: image side the generators work at; training and holdout images are resized to it
            for training and for the audits.
        n_synthetic: images each generator samples (``None``: as many as it trained on, at
            most 2,000).
        canaries: canary images of the one-run audit, taken from the training set (``None``:
            a quarter of it, at most 500; 0 switches the audit off).
        one_scan_per_patient: train on one scan per patient (needs patient ids), so that the
            per-image guarantee is a per-patient one.
        audit: the configuration of each point's audit (embedders, checks, options).
        confidence: confidence of the empirical ε lower bound.
        seed: seeds the canary coin flips, every training run, the sampling and the audits.
        device: ``"cpu"`` or ``"cuda"``.
    """

    epsilons: tuple[float, ...] = (1.0, 3.0, 10.0, math.inf)
    delta: float | None = None
    generator: str = "vae"
    generator_options: Any = field(default_factory=VAEOptions)
    train: TrainOptions = field(default_factory=TrainOptions)
    size: int = 32
    n_synthetic: int | None = None
    canaries: int | None = None
    one_scan_per_patient: bool = False
    audit: AuditConfig = field(default_factory=lambda: AuditConfig(checks=_default_checks()))
    confidence: float = 0.95
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilons", _check_epsilons(tuple(float(e) for e in self.epsilons)))
        GENERATORS.get(self.generator)
        if self.delta is not None and not (0.0 < self.delta < 1.0):
            raise ConfigError(f"--delta must lie in (0, 1); got {self.delta:g}")
        if self.size < 8 or self.size > 256:
            raise ConfigError(f"--size must lie in [8, 256]; got {self.size}")
        if self.n_synthetic is not None and self.n_synthetic < 10:
            raise ConfigError(f"--n-synthetic must be at least 10; got {self.n_synthetic}")
        if self.canaries is not None and (self.canaries < 0 or self.canaries == 1):
            raise ConfigError(f"--canaries must be 0 (no empirical audit) or at least 2; got {self.canaries}")
        if not 0.5 < self.confidence < 1.0:
            raise ConfigError(f"confidence must lie in (0.5, 1); got {self.confidence}")
        if self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer; got {self.seed}")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ConfigError(f"--device must be 'cpu' or 'cuda' (or 'cuda:N'); got {self.device!r}")
        if self.device != "cpu":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(f"--device {self.device} was asked for, but CUDA is not available here; use --device cpu")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (ε = inf written as the string ``"inf"``)."""
        return {
            "epsilons": ["inf" if math.isinf(e) else e for e in self.epsilons],
            "delta": self.delta,
            "generator": self.generator,
            "generator_options": to_jsonable(self.generator_options),
            "train": to_jsonable(self.train),
            "size": self.size,
            "n_synthetic": self.n_synthetic,
            "canaries": self.canaries,
            "one_scan_per_patient": self.one_scan_per_patient,
            "audit": self.audit.to_dict(),
            "confidence": self.confidence,
            "seed": self.seed,
            "device": self.device,
        }

    def fingerprint(self) -> str:
        """A hash of every setting that changes a point's figures (not ε list or device:
        adding a point or moving to a GPU keeps the finished ones)."""
        data = self.to_dict()
        for key in ("epsilons", "device"):
            data.pop(key)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _default_checks() -> tuple[str, ...]:
    # Every default check of an audit, but the metadata check: a generator's samples are made in
    # memory and have no file headers, so it could only ever say "not assessed".
    return tuple(c for c in AuditConfig().checks if c != "metadata")


@dataclass(frozen=True)
class PreparedData:
    """The sets of a sweep, fixed once before any training."""

    train_used: ImageSet  # what every generator trains on (canaries the coin included among it)
    holdout: ImageSet | None
    canaries: ImageSet | None
    canary_bases: ImageSet | None  # the same images without their stamp (never trained on)
    canary_included: np.ndarray
    class_names: tuple[str, ...]
    delta: float
    max_scans_per_patient: int | None
    n_input: int


def prepare(train: ImageSet, holdout: ImageSet | None, config: SweepConfig) -> PreparedData:
    """Resize, pick one scan per patient if asked, draw the canaries and their coin flips."""
    from privaudit.embed.base import Preprocessing

    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0xD9]))
    base = train
    if config.one_scan_per_patient:
        if train.patient_ids is None:
            raise InputError("--one-scan-per-patient needs patient ids in --train (a manifest with a patient_id column)")
        by_patient: dict[str, list[int]] = {}
        for i, p in enumerate(train.patient_ids):
            by_patient.setdefault(p, []).append(i)
        keep = sorted(int(rng.choice(v)) for v in by_patient.values())
        base = train.subset(keep)
    if len(base) < 8:
        raise InputError(f"--train: a DP sweep needs at least 8 training images; got {len(base)}")
    pre = Preprocessing(size=(config.size, config.size))

    def resized(s: ImageSet, source: str) -> ImageSet:
        arr = pre.apply(list(s.images))[:, 0].numpy()
        return ImageSet(images=tuple(np.ascontiguousarray(a) for a in arr), ids=s.ids, patient_ids=s.patient_ids, labels=s.labels, source=source, kind="memory")

    base = resized(base, f"{train.source} ({config.size} px)")
    hold = None if holdout is None else resized(holdout, f"{holdout.source} ({config.size} px)")
    n_can = min(500, len(base) // 4) if config.canaries is None else config.canaries
    if n_can > len(base) // 2:
        raise ConfigError(f"--canaries {n_can}: at most half the training images ({len(base) // 2}) can be canaries")
    order = rng.permutation(len(base))
    canary_idx = np.sort(order[:n_can])
    rest = np.sort(order[n_can:])
    included = rng.random(n_can) < 0.5  # the fair coin flips, before any training
    canary_bases = base.subset(canary_idx, source="canaries") if n_can else None
    canaries = _stamp(canary_bases, rng) if canary_bases is not None else None
    rest_set = base.subset(rest, source=base.source)
    if canaries is not None and included.any():
        inc = np.flatnonzero(included)
        used = ImageSet(
            images=rest_set.images + tuple(canaries.images[i] for i in inc),
            ids=rest_set.ids + tuple(f"canary:{canaries.ids[i]}" for i in inc),
            patient_ids=None if base.patient_ids is None else rest_set.patient_ids + tuple(canaries.patient_ids[i] for i in inc),  # type: ignore[index]
            labels=None if base.labels is None else rest_set.labels + tuple(canaries.labels[i] for i in inc),  # type: ignore[index]
            source=base.source,
            kind="memory",
        )
    else:
        used = rest_set
    class_names = tuple(sorted(set(used.labels))) if used.labels is not None else ()
    if len(class_names) == 1:
        class_names = ()  # one class: nothing to condition on
    delta = config.delta if config.delta is not None else 1.0 / (10 * len(used))
    k = None
    if used.patient_ids is not None:
        counts: dict[str, int] = {}
        for p in used.patient_ids:
            counts[p] = counts.get(p, 0) + 1
        k = max(counts.values())
    return PreparedData(used, hold, canaries, canary_bases, included, class_names, float(delta), k, len(train))


def _stamp(images: ImageSet, rng: np.random.Generator) -> ImageSet:
    """Make each canary unmistakable: a patch of random black and white pixels (half the
    side, at a random place) stamped on a training image.

    A real image as a canary measures what an attack learns about a typical image, which is
    little unless the generator memorises; DP must protect *every* image, and a random patch of
    ``(side/2)^2`` bits can only be reproduced by remembering that image (the patches of the
    other canaries teach nothing about it). This is the input-space canary of the one-run audit
    (Steinke et al. 2023 use crafted canaries too); the bound it gives is for such images.
    """
    out = []
    for img in images.images:
        side = img.shape[0]
        k = max(2, side // 2)
        r0, c0 = (int(v) for v in rng.integers(0, side - k + 1, size=2))
        stamped = np.array(img, dtype=np.float32, copy=True)
        stamped[r0 : r0 + k, c0 : c0 + k] = rng.integers(0, 2, size=(k, k)).astype(np.float32)
        out.append(stamped)
    return ImageSet(images=tuple(out), ids=images.ids, patient_ids=images.patient_ids, labels=images.labels, source="canaries", kind="memory")


def _tensors(images: ImageSet, class_names: Sequence[str]) -> tuple[Any, Any]:
    import torch

    x = torch.from_numpy(np.stack(images.images))[:, None].float()
    if not class_names or images.labels is None:
        return x, None
    index = {c: i for i, c in enumerate(class_names)}
    return x, torch.tensor([index.get(lbl, 0) for lbl in images.labels], dtype=torch.long)


def _point_seed(seed: int, name: str) -> int:
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
    return int(np.random.SeedSequence([seed, key]).generate_state(1)[0] >> 1)


def run_point(
    epsilon: float,
    data: PreparedData,
    config: SweepConfig,
    *,
    point_dir: Path,
    cache: Any,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train, sample, audit and empirically audit one point; write its files; return its record."""
    import torch

    from privaudit.dp.empirical import one_run_audit
    from privaudit.dp.train import per_sample_scores, sample_images, train_generator
    from privaudit.pipeline import audit, write_outputs

    name = point_name(epsilon)
    seed = _point_seed(config.seed, name)
    gen_cls = GENERATORS.get(config.generator)
    x, y = _tensors(data.train_used, data.class_names)
    label = "no DP" if math.isinf(epsilon) else f"ε = {epsilon:g}"

    def on_epoch(epoch: int, total: int, loss: float) -> None:
        if progress is not None:
            progress(f"{label}: training epoch {epoch}/{total}, loss {loss:.1f}")

    t0 = time.perf_counter()
    model, stats = train_generator(
        gen_cls, x, y, n_classes=len(data.class_names), epsilon=epsilon, delta=data.delta,
        options=config.train, generator_options=config.generator_options, seed=seed,
        device=config.device, progress=on_epoch,
    )
    t_train = time.perf_counter() - t0
    point_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    atomic_write_bytes(point_dir / "generator.pt", buf.getvalue())

    # Synthetic set: labels drawn in the training proportions.
    if progress is not None:
        progress(f"{label}: sampling and auditing")
    t1 = time.perf_counter()
    n_syn = config.n_synthetic or min(len(data.train_used), 2000)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    if y is not None:
        lab = torch.from_numpy(rng.choice(y.numpy(), size=n_syn, replace=True)).long()
        syn_labels = [data.class_names[i] for i in lab.tolist()]
    else:
        lab, syn_labels = None, None
    pixels = sample_images(gen_cls, model, lab, n_syn, seed=seed + 7)
    synthetic = ImageSet(
        images=tuple(np.ascontiguousarray(a) for a in pixels),
        ids=tuple(f"{name}-{i:05d}" for i in range(n_syn)),
        labels=tuple(syn_labels) if syn_labels is not None else None,
        source=f"dp-sweep:{config.generator}:{name}",
        kind="memory",
    )
    arrays = io.BytesIO()
    # The format load_imageset reads (keys images and label; image i is "<name>-<i:05d>").
    extra = {} if syn_labels is None else {"label": np.array(syn_labels, dtype=str)}
    np.savez_compressed(arrays, images=pixels, **extra)
    atomic_write_bytes(point_dir / "synthetic.npz", arrays.getvalue())
    audit_config = config.audit.replace(seed=config.seed, device=config.device)
    result = audit(data.train_used, synthetic, data.holdout, config=audit_config, cache=cache)
    write_outputs(result, point_dir, images={k: v for k, v in (("train", data.train_used), ("synthetic", synthetic), ("holdout", data.holdout)) if v is not None})
    t_audit = time.perf_counter() - t1

    # The one-run audit of the DP guarantee, on the canaries.
    t2 = time.perf_counter()
    empirical = None
    if data.canaries is not None:
        cx, cy = _tensors(data.canaries, data.class_names)
        bx, _ = _tensors(data.canary_bases, data.class_names)  # type: ignore[arg-type]
        losses = per_sample_scores(gen_cls, model, cx, cy, seed=seed + 11, draws=0, device=config.device)
        base_losses = per_sample_scores(gen_cls, model, bx, cy, seed=seed + 11, draws=0, device=config.device)
        # Calibrated by the same image without its stamp (never trained on): what is left is
        # how much better the generator fits that image's random patch.
        emp = one_run_audit(
            base_losses - losses, data.canary_included, delta=data.delta, confidence=config.confidence,
            rng=np.random.default_rng(np.random.SeedSequence([seed, 2])),
            attack=f"{config.generator} loss of the stamped canary minus loss of its unstamped image (negative ELBO at the latent mean), thresholded",
        )
        empirical = to_jsonable(emp)
    t_emp = time.perf_counter() - t2

    metrics: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    for cname, check in result.checks.items():
        checks[cname] = {"status": check.status.value, "summary": check.summary, "reason": check.reason}
        for mname, metric in check.metrics.items():
            metrics[f"{cname}.{mname}"] = to_jsonable(metric)
    record = {
        "name": name,
        "epsilon": None if math.isinf(epsilon) else epsilon,
        "private": not math.isinf(epsilon),
        "training": to_jsonable(stats),
        "generator_parameters": n_parameters(model),
        "empirical": empirical,
        "synthetic": {"n_images": n_syn, "content_sha256": synthetic.content_sha256},
        "verdict": result.verdict.status.value,
        "checks": checks,
        "metrics": metrics,
        "seconds": {"train": t_train, "sample_and_audit": t_audit, "empirical": t_emp, "total": time.perf_counter() - t0},
        "files": {
            "results": f"points/{name}/results.json",
            "report": f"points/{name}/report.html",
            "generator": f"points/{name}/generator.pt",
            "synthetic": f"points/{name}/synthetic.npz",
        },
    }
    atomic_write_text(point_dir / "point.json", dumps_json(record))
    return record


@dataclass(frozen=True)
class SweepResult:
    """The sweep's result: the ``dp_results.json`` content as a dict, and where it was written."""

    data: dict[str, Any]
    out: Path | None

    @property
    def points(self) -> list[dict[str, Any]]:
        return self.data["points"]


def dp_sweep(
    train: ImageSet | str | os.PathLike[str],
    holdout: ImageSet | str | os.PathLike[str] | None = None,
    *,
    config: SweepConfig | None = None,
    out: str | os.PathLike[str],
    force: bool = False,
    cache: Any = None,
    progress: ProgressFn | None = None,
) -> SweepResult:
    """Train the reference generator at each ε of ``config``, audit each, write the curve.

    Args:
        train: the training images (an :class:`ImageSet` or a path :func:`load_imageset` reads).
        holdout: real images of other patients (strongly recommended, as for an audit).
        config: the sweep's settings (:class:`SweepConfig`).
        out: the output folder. A folder holding a sweep with the same settings is resumed
            (finished points are kept); one with other settings is refused; any other
            non-empty folder needs ``force``.
        force: write into a non-empty folder that holds no sweep (nothing in it is removed).
        cache: the embedding cache, as for :func:`privaudit.audit`.
        progress: called with a one-line message as each point advances.

    Example:
        >>> from privaudit.phantoms import make_study
        >>> s = make_study(n_train_patients=10, n_holdout_patients=10, n_synthetic=10, size=32)
        >>> cfg = SweepConfig(epsilons=(1.0,), train=TrainOptions(epochs=1), canaries=8,
        ...                   audit=AuditConfig(embedders=("pixels",), checks=("copies",)))
        >>> r = dp_sweep(s.train, s.holdout, config=cfg, out=getfixture("tmp_path") / "sweep")
        >>> r.points[0]["training"]["epsilon"] <= 1.0
        True
    """
    from privaudit.pipeline import _as_cache, _as_imageset, _validate_roles

    config = config or SweepConfig()
    out_dir = Path(out)
    state = _open_output(out_dir, config, force=force)
    train_set = _as_imageset(train, "train", config.audit.max_skipped)
    hold_set = None if holdout is None else _as_imageset(holdout, "holdout", config.audit.max_skipped)
    warnings = _validate_roles(train_set, hold_set)
    inputs_key = {"train": train_set.content_sha256, "holdout": None if hold_set is None else hold_set.content_sha256}
    if state is not None and state.get("inputs") != inputs_key:
        raise OutputError(f"--out {out_dir} holds a sweep of other input images; choose a new folder")
    data = prepare(train_set, hold_set, config)
    store = _as_cache(cache)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / STATE_FILE, dumps_json({"fingerprint": config.fingerprint(), "inputs": inputs_key, "privaudit_version": __version__}))

    points: list[dict[str, Any]] = []
    for i, eps in enumerate(config.epsilons):
        name = point_name(eps)
        pdir = out_dir / "points" / name
        done = _load_point(pdir)
        if done is not None:
            log.info("point %s: finished in an earlier run, kept", name)
            if progress is not None:
                progress(f"point {i + 1}/{len(config.epsilons)} ({name}): finished earlier, kept")
            points.append(done)
            continue
        log.info("point %s: training", name)

        def point_progress(msg: str, _i: int = i) -> None:
            if progress is not None:
                progress(f"point {_i + 1}/{len(config.epsilons)}: {msg}")

        points.append(run_point(eps, data, config, point_dir=pdir, cache=store, progress=point_progress))
        _write_results(out_dir, config, data, train_set, hold_set, points, warnings, complete=False)
    result = _write_results(out_dir, config, data, train_set, hold_set, points, warnings, complete=True)
    return SweepResult(result, out_dir)


def _open_output(out: Path, config: SweepConfig, *, force: bool) -> dict[str, Any] | None:
    """The saved state of a sweep to resume in ``out``, or ``None`` for a fresh one."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    state_path = out / STATE_FILE
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise OutputError(f"--out {out}: {STATE_FILE} is unreadable; choose a new folder") from None
        if state.get("fingerprint") != config.fingerprint():
            raise OutputError(
                f"--out {out} holds a sweep with other settings (only the ε list and --device may change "
                "when resuming); choose a new folder"
            )
        return state
    if not force:
        raise OutputError(f"--out {out} is not empty; choose a new folder, or pass --force to write the sweep's files into it")
    return None


def _load_point(pdir: Path) -> dict[str, Any] | None:
    path = pdir / "point.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("point %s: point.json is unreadable; the point is run again", pdir.name)
        return None


def _write_results(
    out: Path,
    config: SweepConfig,
    data: PreparedData,
    train: ImageSet,
    holdout: ImageSet | None,
    points: list[dict[str, Any]],
    warnings: list[str],
    *,
    complete: bool,
) -> dict[str, Any]:
    from privaudit.dp.report import render_dp_html
    from privaudit.results import environment, utc_now

    k = data.max_scans_per_patient
    eps_finite = [p["training"]["epsilon"] for p in points if p["private"]]
    unit = {
        "unit": "image",
        "one_scan_per_patient": config.one_scan_per_patient,
        "max_scans_per_patient": k,
        "statement": _unit_statement(k, config.one_scan_per_patient, data.delta),
    }
    notes = list(warnings)
    inf_points = [p for p in points if not p["private"] and p.get("empirical")]
    control = None
    if inf_points:
        lb = inf_points[0]["empirical"]["epsilon_lb"]
        passed = lb is not None and lb > 0
        control = {
            "epsilon_lb_at_inf": lb,
            "passed": passed,
            "statement": (
                f"At ε = inf the attack proves ε ≥ {lb:.3g}: the audit detects memorisation when it is there."
                if passed
                else "At ε = inf the attack proves nothing (lower bound 0): this audit is too weak to "
                "confirm any guarantee; more canaries or longer training would be needed."
            ),
        }
        if not passed:
            notes.append("positive control failed: the one-run audit finds no leakage even without DP; its bounds at other ε say nothing")
    violations = [
        p["name"] for p in points
        if p["private"] and p.get("empirical") and p["empirical"]["epsilon_lb"] is not None
        and p["empirical"]["epsilon_lb"] > p["training"]["epsilon"]
    ]
    if violations:
        notes.append(
            "the empirical lower bound exceeds the accountant's ε at " + ", ".join(violations)
            + ": with 95 % confidence this points to a bug in training or in the audit"
        )
    result = {
        "kind": "privaudit-dp-sweep",
        "schema_version": DP_SCHEMA_VERSION,
        "privaudit_version": __version__,
        "created_at": utc_now(),
        "complete": complete and len(points) == len(config.epsilons),
        "seed": config.seed,
        "config": config.to_dict(),
        "environment": environment(),
        "inputs": {
            "train": to_jsonable(train.summary("train")),
            "holdout": None if holdout is None else to_jsonable(holdout.summary("holdout")),
            "n_train_input": data.n_input,
            "n_train_used": len(data.train_used),
            "classes": list(data.class_names),
        },
        "privacy": {
            "delta": data.delta,
            "delta_rule": "given with --delta" if config.delta is not None else "1 / (10 N), N = images trained on",
            "accountant": config.train.accountant,
            **unit,
        },
        "canaries": {
            "n": 0 if data.canaries is None else len(data.canaries),
            "n_included": int(data.canary_included.sum()),
            "source": "training images, each included by a fair coin flip before training",
        },
        "positive_control": control,
        "points": points,
        "warnings": notes,
        "max_accountant_epsilon": max(eps_finite) if eps_finite else None,
    }
    payload = dumps_json(result)
    atomic_write_text(out / RESULTS_FILE, payload)
    atomic_write_text(out / REPORT_FILE, render_dp_html(json.loads(payload)))
    return json.loads(payload)


def _unit_statement(k: int | None, one_scan: bool, delta: float) -> str:
    base = (
        "DP-SGD protects one training image: whether any single image was in training changes what "
        f"the generator does by at most a factor e^ε (plus a probability δ = {delta:.3g} of no protection)."
    )
    if one_scan:
        return base + " Training used one scan per patient, so this is also the protection of each patient."
    if k is None:
        return base + " Patient ids are missing: a patient with k scans is protected only at about kε (group privacy)."
    if k == 1:
        return base + " Every patient has one scan in training, so this is also the protection of each patient."
    return (
        base + f" Patients have up to {k} scans in training: such a patient is protected only at about {k}ε "
        "(group privacy, with δ growing too); use --one-scan-per-patient for a per-patient guarantee."
    )


def load_dp_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a ``dp_results.json`` (one-line ``InputError`` on any problem)."""
    import jsonschema
    from importlib import resources

    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"dp results file {p} not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"dp results file {p} cannot be read as JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("kind") != "privaudit-dp-sweep":
        raise InputError(f"{p} is not a privaudit dp_results.json")
    major = str(data.get("schema_version", "0")).split(".")[0]
    if major != DP_SCHEMA_VERSION.split(".")[0]:
        raise InputError(f"{p} uses dp schema {data.get('schema_version')}; this privaudit reads {DP_SCHEMA_VERSION.split('.')[0]}.x")
    schema = json.loads(resources.files("privaudit").joinpath("schemas/dp_sweep.schema.json").read_text(encoding="utf-8"))
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(data))
    if error is not None:
        where = "/".join(str(x) for x in error.absolute_path) or "the top level"
        raise InputError(f"{p} does not match the dp sweep schema at {where}: {' '.join(error.message.split())[:200]}")
    return data


__all__ = ["SweepConfig", "SweepResult", "dp_sweep", "parse_epsilons", "point_name", "prepare", "run_point", "load_dp_results", "DP_SCHEMA_VERSION"]
