"""The orchestrator: data -> embed -> search -> checks -> policy -> outputs.

It never branches on a check's or an embedder's name: both come from their registries and share
one signature.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from privaudit._util import replace_all, stage_bytes, to_jsonable
from privaudit._version import __version__
from privaudit import cluster
from privaudit.checks.base import CHECKS, AuditContext, CheckResult, CheckStatus, EmbeddedSets, Metric
from privaudit.config import AuditConfig
from privaudit.data.imageset import ImageSet
from privaudit.data.lazy import LazyImages
from privaudit.data.loaders import load_imageset
from privaudit.embed.base import get_embedder, parse_spec
from privaudit.embed.cache import SHARD_SIZE, EmbeddingCache, gather
from privaudit.errors import InputError, OutputError
from privaudit.patients import patient_view
from privaudit.policy import Policy
from privaudit.search import SearchTiming, timed_searches
from privaudit.stages import StageClock
from privaudit.results import SCHEMA_VERSION, AuditResult, EmbeddingCount, RunInfo, environment, utc_now
from privaudit.waivers import Waivers

log = logging.getLogger(__name__)

ImageSource = ImageSet | str | os.PathLike[str]

#: The files an audit writes into its output folder.
OUTPUT_FILES = ("results.json", "report.html")


@cluster.runs_on_cluster
def audit(
    train: ImageSource,
    synthetic: ImageSource,
    holdout: ImageSource | None = None,
    *,
    config: AuditConfig | None = None,
    policy: Policy | str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
    cache: EmbeddingCache | str | os.PathLike[str] | bool | None = None,
    waivers: Waivers | str | os.PathLike[str] | None = None,
    no_images: bool = False,
) -> AuditResult:
    """Audit a synthetic image set against the training set it was made from.

    Args:
        train: the generator's training images (an :class:`ImageSet` or a path that
            :func:`privaudit.load_imageset` reads).
        synthetic: the images to be released.
        holdout: real images of patients *not* in training, from the same population; they
            calibrate every threshold. Strongly recommended: without them the checks fall back
            to weaker, documented substitutes.
        config: what to measure; defaults to :class:`AuditConfig()`.
        policy: a :class:`Policy`, a policy file, or ``None`` for the shipped default.
        out: a folder to write ``results.json`` and ``report.html`` into (created if needed).
        force: write into ``out`` even if it is not empty (only the two files are replaced).
        cache: the embedding cache: ``None`` for the default private folder (see
            :mod:`privaudit.embed.cache`), a folder, an :class:`EmbeddingCache`, or ``False``
            to embed everything afresh and store nothing.
        waivers: a reviewer's waivers (:class:`privaudit.waivers.Waivers` or a waivers TOML
            file); the verdict takes them into account and says how many it relied on.
        no_images: write shareable outputs: no image data in the report, and image ids,
            patient ids and paths pseudonymised in both files (:mod:`privaudit.redact`). The
            returned result keeps the real ids.

    Returns:
        The :class:`AuditResult`, verdict included.

    Example:
        >>> from privaudit.phantoms import make_study
        >>> study = make_study(n_train_patients=20, n_holdout_patients=30, n_synthetic=40)
        >>> result = audit(study.train, study.leaky, study.holdout)
        >>> result.verdict.status.value
        'fail'
    """
    config = config or AuditConfig()
    if not isinstance(policy, Policy):
        policy = Policy.default() if policy is None else Policy.from_toml(policy)
    if waivers is not None and not isinstance(waivers, Waivers):
        waivers = Waivers.from_toml(waivers)
    out_dir = prepare_output_dir(out, force=force) if out is not None else None

    clock = StageClock()
    log.info("loading images")
    with clock.stage("load"):
        sets = {
            "train": _as_imageset(train, "train", config.max_skipped),
            "synthetic": _as_imageset(synthetic, "synthetic", config.max_skipped),
            "holdout": None if holdout is None else _as_imageset(holdout, "holdout", config.max_skipped),
        }
        warnings = _validate_roles(sets["train"], sets["holdout"])

    store = _as_cache(cache)
    sizes = {role: len(s) for role, s in sets.items() if s is not None}
    spaces = {}
    for name in config.spaces_needed(sizes):
        with clock.stage(f"embed {name}"):
            spaces[name] = _embed(name, sets, config, store)
    ctx = AuditContext(
        train=sets["train"],
        synthetic=sets["synthetic"],
        holdout=sets["holdout"],
        spaces=spaces,
        seed=config.seed,
        configured=config.embedders,
    )
    checks: dict[str, CheckResult] = {}
    searches: list[SearchTiming] = []
    for name in config.checks:
        check = CHECKS.get(name)()
        missing = [role for role in check.requires if sets.get(role) is None]
        if missing:
            reason = f"needs --{' and --'.join(missing)}"
            checks[name] = CheckResult(
                check=name,
                status=CheckStatus.NOT_ASSESSED,
                reason=reason,
                summary=f"{check.title}: not assessed ({reason}).",
                metrics={m: Metric(None, 0, direction=spec.direction) for m, spec in check.metrics.items()},
            )
            continue
        log.info("running check %s", name)
        with clock.stage(f"check {name}"), timed_searches() as found:
            checks[name] = check.run(ctx, config.options_for(name))
        searches.extend(dataclasses.replace(t, stage=f"check {name}") for t in found)

    with clock.stage("verdict"):
        inputs = {role: s.summary(role) for role, s in sets.items() if s is not None}
        verdict = policy.evaluate(checks, waivers=waivers, inputs=inputs)
        patients = patient_view({name: to_jsonable(c) for name, c in checks.items()})
    result = AuditResult(
        schema_version=SCHEMA_VERSION,
        privaudit_version=__version__,
        created_at=utc_now(),
        seed=config.seed,
        config=config.to_dict(sizes),
        environment=environment(),
        inputs=inputs,
        embedders=tuple(space.info for space in ctx.spaces.values()),
        checks=checks,
        verdict=verdict,
        warnings=tuple(warnings),
        patients=patients,
        run=RunInfo(
            cache_dir=None if store is None else str(store.root),
            embedded={name: EmbeddingCount(s.from_cache, s.embedded) for name, s in (store.stats.items() if store else ())},
            stages=tuple(clock.stages),
            searches=tuple(searches),
            peak_scope=clock.peak_scope,
            seconds=clock.total_seconds,
            peak_rss_mb=clock.process_peak_mib(),
            cluster=None if cluster.active() is None else cluster.active().info(),  # type: ignore[union-attr]
        ),
    )
    if out_dir is not None:
        write_outputs(result, out_dir, images={k: v for k, v in sets.items() if v is not None}, no_images=no_images)
    return result


def _as_imageset(source: ImageSource, role: str, max_skipped: float) -> ImageSet:
    if isinstance(source, ImageSet):
        if len(source) == 0:
            raise InputError(f"--{role}: the image set is empty")
        return source
    return load_imageset(source, role=role, max_skipped=max_skipped)


def _validate_roles(train: ImageSet, holdout: ImageSet | None) -> list[str]:
    """Refuse a holdout that shares patients with training; say when it cannot be checked."""
    warnings: list[str] = []
    if holdout is None:
        warnings.append("no holdout was given: thresholds fall back to weaker estimates from the training set")
        return warnings
    if train.patient_ids is not None and holdout.patient_ids is not None:
        shared = sorted(set(train.patient_ids) & set(holdout.patient_ids))
        if shared:
            shown = ", ".join(shared[:5]) + (", ..." if len(shared) > 5 else "")
            raise InputError(
                f"--holdout shares {len(shared)} patient(s) with --train ({shown}); a holdout must "
                "hold other patients, or its images are not non-members"
            )
    else:
        warnings.append(
            "patient ids are missing for training or holdout, so it could not be checked that the "
            "holdout holds other patients; if it does not, copies can be missed"
        )
    return warnings


def _as_cache(cache: EmbeddingCache | str | os.PathLike[str] | bool | None) -> EmbeddingCache | None:
    if cache is False:
        return None
    if isinstance(cache, EmbeddingCache):
        return cache
    return EmbeddingCache(None if cache is None or cache is True else cache)


def _embed(spec: str, sets: Mapping[str, ImageSet | None], config: AuditConfig, cache: EmbeddingCache | None) -> EmbeddedSets:
    embedder = get_embedder(spec, device=config.device, options=config.embedder_options_for(parse_spec(spec)[0]))
    if embedder.requires_fit:
        embedder.fit(sets["train"], seed=config.seed, cache=cache)  # type: ignore[arg-type]
    fingerprint = embedder.fingerprint()
    # With --cluster, embedding runs there (fitting stays here), unless shipping the images costs more.
    remote = cluster.active() if embedder.offload else None

    def compute(images: Sequence[np.ndarray]) -> np.ndarray:
        if remote is not None:  # the cluster is sent pixels: a lazy shard is read here first
            return remote.embed(embedder, tuple(images) if isinstance(images, LazyImages) else images, batch_size=config.batch_size)
        return embedder.embed(images, batch_size=config.batch_size)  # reads a lazy shard a batch at a time

    shard_size = SHARD_SIZE if remote is None else remote.embed_shard_size
    vectors = {}
    for role, images in sets.items():
        if images is None:
            continue
        log.info("embedding %d %s images with %s", len(images), role, embedder.name)
        if cache is None:
            vectors[role] = _embed_in_shards(images.images, embedder.dim, compute, shard_size=shard_size)
        else:
            vectors[role] = cache.embed(fingerprint, images.pixel_digests, images.images, embedder.dim, compute, label=spec, shard_size=shard_size)
    return EmbeddedSets(
        info=embedder.info(),
        near_duplicate_similarity=embedder.near_duplicate_similarity,
        train=vectors["train"],
        synthetic=vectors["synthetic"],
        holdout=vectors.get("holdout"),
        embedder=embedder,
    )


def _embed_in_shards(
    images: Sequence[np.ndarray], dim: int, compute: Callable[[Sequence[np.ndarray]], np.ndarray], *, shard_size: int
) -> np.ndarray:
    """Embed without a cache, ``shard_size`` images at a time, as the cache does: a lazy set is
    read one shard at a time, never all at once."""
    out = np.empty((len(images), dim), dtype=np.float32)
    for start in range(0, len(images), shard_size):
        out[start : start + shard_size] = compute(gather(images, np.arange(start, min(start + shard_size, len(images)))))
    return out


def prepare_output_dir(out: str | os.PathLike[str], *, force: bool, create: bool = False) -> Path:
    """Check that ``out`` can receive the outputs: refuse a file, a non-empty folder unless
    ``force``, or a place that cannot be written.

    The folder itself is created only when the outputs are written (or here, with ``create``),
    so that an audit that stops on bad input or an interruption leaves nothing behind.
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OutputError(f"--out {path} exists and is not a folder")
    if path.is_dir():
        if any(path.iterdir()) and not force:
            raise OutputError(
                f"--out {path} is not empty; choose a new folder, or pass --force to write into it "
                f"(only {' and '.join(OUTPUT_FILES)} are replaced)"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"--out {path} is not writable")
    else:
        parent = path.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise OutputError(f"--out {path} cannot be created ({os.strerror(errno.ENOTDIR)})")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"--out {path} cannot be created ({parent} is not writable)")
    if create:
        _make_dir(path)
    return path


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--out {path} cannot be created ({exc.strerror})") from None


def write_outputs(
    result: AuditResult,
    out_dir: str | os.PathLike[str],
    *,
    images: Mapping[str, ImageSet] | None,
    no_images: bool = False,
) -> dict[str, Path]:
    """Write ``results.json`` and ``report.html`` atomically into ``out_dir``.

    Both are rendered in memory first, so a failure leaves neither half-written. With
    ``no_images`` both are the shareable, pseudonymised form.
    """
    from privaudit._util import dumps_json
    from privaudit.redact import pseudonymise
    from privaudit.reports import render_html

    out = Path(out_dir)
    if no_images:
        shareable = pseudonymise(result.to_dict())
        payload = {"results.json": dumps_json(shareable), "report.html": render_html(shareable, no_images=True)}
    else:
        payload = {"results.json": result.to_json(), "report.html": render_html(result, images=images)}
    created = not out.exists()
    _make_dir(out)
    # Both files are written to temporary files first and then renamed together, so that neither
    # a full disk nor an interruption leaves a half-written file or a new results.json next to an
    # old report.html. If that fails, a folder created for them is removed again.
    staged: list[tuple[Path, Path]] = []
    committed = False
    try:
        for name, text in payload.items():
            try:
                staged.append((stage_bytes(out / name, text.encode("utf-8")), out / name))
            except OSError as exc:
                raise OutputError(f"cannot write {out / name} ({exc.strerror or exc})") from None
        try:
            replace_all(staged)
        except OSError as exc:
            raise OutputError(f"cannot write into {out} ({exc.strerror or exc})") from None
        committed = True
    finally:
        if not committed:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
            if created:
                with contextlib.suppress(OSError):
                    out.rmdir()  # only if empty
    return {name: out / name for name in payload}
