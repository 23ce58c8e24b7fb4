"""The self-contained HTML report, rendered from ``reports/templates/`` with jinja2.

Self-contained means one file with no external requests: inline CSS, charts as SVG ``data:``
URIs, thumbnails as PNG ``data:`` URIs, no scripts (it reads the same with JavaScript off).

The report renders from the ``results.json`` form of a result, so an audit's report and one
re-rendered later by ``privaudit report`` are the same document. Thumbnails come from the image
sets when the audit has them in memory; on re-rendering, :func:`reload_images` loads each set
again from the path recorded in ``results.json``, and only if its content hash is unchanged.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from privaudit.data.imageset import ImageSet
from privaudit.errors import InputError
from privaudit.results import AuditResult

log = logging.getLogger(__name__)

#: Flagged pairs shown as thumbnails; all of them are listed in results.json.
MAX_PAIRS_SHOWN = 60
#: Skipped files listed; the count is always shown.
MAX_SKIPPED_SHOWN = 100
THUMBNAIL_SIDE = 112

ImageLoader = Callable[[str], "ImageSet | None"]


def render_html(
    result: AuditResult | Mapping[str, Any],
    *,
    images: Mapping[str, ImageSet] | None = None,
    no_images: bool = False,
    image_loader: ImageLoader | None = None,
    image_notes: Mapping[str, str] | None = None,
) -> str:
    """Render the report for ``result``.

    Args:
        result: the audit result, or its ``results.json`` form.
        images: the audited image sets by role, for thumbnails; without them (and without
            ``image_loader``) the pairs are listed by id only.
        no_images: the shareable form: no image data, identifiers pseudonymised
            (:func:`privaudit.redact.pseudonymise`); ``images`` is ignored.
        image_loader: called with a role the first time a thumbnail of that role is needed;
            returns the set or ``None`` (used when re-rendering, see :func:`reload_images`).
        image_notes: why a role's thumbnails are missing, by role (filled in by the loader).

    Each check's section comes from ``templates/checks/<name>.html.j2`` (or a generic table of
    its metrics), rendered with ``c`` (its result as a dict), ``name``, ``title``,
    ``thumb(role, id)`` (a thumbnail ``data:`` URI or ``None``), ``charts`` (the
    :mod:`privaudit.reports.charts` functions, cached), ``waiver_for(check, item)`` and the
    macros of ``checks/_macros.html.j2``.
    """
    from privaudit.redact import pseudonymise

    data = result.to_dict() if isinstance(result, AuditResult) else dict(result)
    if no_images:
        data = pseudonymise(data)
        images, image_loader = None, None
    # The loader fills its notes while the first pass runs, so the dict is shared, not copied.
    notes: Mapping[str, str] = image_notes if image_notes is not None else {}
    thumbs = _Thumbnails(images or {}, image_loader)
    charts = _CachedCharts()
    # Two passes when images are loaded lazily: the first finds which sets the page needs (and
    # why any could not be shown), so that the notice at the top of the second is accurate.
    html = _render(data, thumbs, charts, notes, no_images)
    if thumbs.n_shown or notes:
        html = _render(data, thumbs, charts, notes, no_images)
    return html


def template_env() -> Any:
    """The jinja2 environment of privaudit's HTML reports (autoescaped, strict, the ``fmt`` filter)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("privaudit", "reports/templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    return env


def _render(data: dict[str, Any], thumbs: _Thumbnails, charts: _CachedCharts, notes: Mapping[str, str], no_images: bool) -> str:
    env = template_env()
    env.filters["pct"] = _pct
    env.globals.update(charts=charts, thumb=thumbs.get, diff_thumb=thumbs.diff, max_pairs=MAX_PAIRS_SHOWN, max_skipped=MAX_SKIPPED_SHOWN)
    template = env.get_template("report.html.j2")
    return template.render(
        r=data,
        no_images=no_images,
        has_images=thumbs.n_shown > 0,
        image_notes=dict(notes),
        config_json=json.dumps(data["config"], indent=2),
        check_titles=_check_titles(),
        metric_descriptions=_metric_descriptions(),
        waiver_for=_waiver_lookup(data),
    )


def _check_titles() -> dict[str, str]:
    from privaudit.checks import CHECKS

    return {name: CHECKS.get(name).title for name in CHECKS.names()}


def _metric_descriptions() -> dict[str, str]:
    from privaudit.checks.base import metric_catalog

    return {name: spec.description for name, spec in metric_catalog().items()}


def _waiver_lookup(data: Mapping[str, Any]) -> Callable[[str, Mapping[str, Any]], dict[str, Any] | None]:
    review = (data.get("verdict") or {}).get("review") or {}
    applied = review.get("applied", ())

    def waiver_for(check: str, item: Mapping[str, Any]) -> dict[str, Any] | None:
        for w in applied:
            if w["check"] == check and all(item.get(k) == v for k, v in w["item"].items()):
                return w
        return None

    return waiver_for


class _CachedCharts:
    """The chart functions, each call rendered once per report (both passes share it)."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Callable[..., Any]:
        from privaudit.reports import charts

        fn = getattr(charts, name)
        if not callable(fn) or name.startswith("_"):
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> Any:
            key = repr((name, args, sorted(kwargs.items())))
            if key not in self._cache:
                self._cache[key] = fn(*args, **kwargs)
            return self._cache[key]

        return call


class _Thumbnails:
    """Thumbnails on demand, each image encoded once; sets loaded lazily through ``loader``."""

    def __init__(self, images: Mapping[str, ImageSet], loader: ImageLoader | None) -> None:
        self._images = dict(images)
        self._loader = loader
        self._tried: set[str] = set(images)
        self._done: dict[tuple[str, str], str | None] = {}
        self.n_shown = 0

    def get(self, role: str, image_id: str) -> str | None:
        key = (role, image_id)
        if key not in self._done:
            images = self._set(role)
            uri = None
            if images is not None:
                try:
                    uri = thumbnail_data_uri(images.images[images.index_of(image_id)])
                except KeyError:
                    uri = None
                except InputError as exc:  # a lazy set's file changed after the checks read it
                    log.warning("no thumbnail for %s: %s", image_id, exc)
                    uri = None
            self._done[key] = uri
            self.n_shown += uri is not None
        return self._done[key]

    def diff(self, role_a: str, id_a: str, role_b: str, id_b: str) -> str | None:
        """A thumbnail of the absolute pixel difference of two images (at the size of the first),
        brightened x4 so small differences show."""
        key = (f"diff:{role_a}:{role_b}", f"{id_a}\0{id_b}")
        if key not in self._done:
            a_set, b_set = self._set(role_a), self._set(role_b)
            uri = None
            if a_set is not None and b_set is not None:
                try:
                    a = a_set.images[a_set.index_of(id_a)]
                    b = b_set.images[b_set.index_of(id_b)]
                except KeyError:
                    a = b = None
                except InputError as exc:  # a lazy set's file changed after the checks read it
                    log.warning("no difference thumbnail for %s and %s: %s", id_a, id_b, exc)
                    a = b = None
                if a is not None and b is not None:
                    from privaudit.embed.base import Preprocessing

                    b_resized = Preprocessing(size=a.shape).apply([b])[0, 0].numpy()
                    uri = thumbnail_data_uri(np.clip(4.0 * np.abs(a - b_resized), 0.0, 1.0))
            self._done[key] = uri
        return self._done[key]

    def _set(self, role: str) -> ImageSet | None:
        if role not in self._tried:
            self._tried.add(role)
            if self._loader is not None:
                loaded = self._loader(role)
                if loaded is not None:
                    self._images[role] = loaded
        return self._images.get(role)


def reload_images(results: Mapping[str, Any], results_path: str | os.PathLike[str]) -> tuple[ImageLoader, dict[str, str]]:
    """A loader for :func:`render_html` that reads each input again from where it was audited.

    The recorded ``source`` is tried as given (relative to the current folder), then relative
    to the folder of ``results.json`` and its parent. A set is used only if its content hash
    equals the recorded one, so a report never shows an image that was not audited. Returns
    the loader and the dict it fills with a note per role it could not load.
    """
    from privaudit.data.loaders import load_imageset
    from privaudit.errors import PrivauditError

    notes: dict[str, str] = {}
    base = Path(results_path).resolve().parent
    inputs = results.get("inputs", {})

    def load(role: str) -> ImageSet | None:
        summary = inputs.get(role)
        if summary is None:
            return None
        source = summary["source"]
        if results.get("pseudonymised"):
            notes[role] = "the results were pseudonymised (--no-images), so their images cannot be found again"
            return None
        if summary["kind"] == "memory":
            notes[role] = f"the {role} set was passed in memory through the Python API, so it cannot be reloaded"
            return None
        candidates = [Path(source)]
        if not Path(source).is_absolute():
            candidates += [base / source, base.parent / source]
        path = next((c for c in candidates if c.exists()), None)
        if path is None:
            notes[role] = f"the {role} set is no longer at {source} (looked relative to the current folder and to the results file)"
            return None
        try:
            images = load_imageset(path, role=role, max_skipped=1.0)
        except PrivauditError as exc:
            notes[role] = f"the {role} set at {path} could not be read again ({exc})"
            return None
        if images.content_sha256 != summary["content_sha256"]:
            notes[role] = f"the {role} set at {path} changed since the audit (its content hash differs), so its images are not shown"
            return None
        log.info("reloaded %d %s images from %s for thumbnails", len(images), role, path)
        return images

    return load, notes


def thumbnail_data_uri(image: np.ndarray, *, side: int = THUMBNAIL_SIDE) -> str:
    """A PNG ``data:`` URI of a working-format image, its longer side scaled to ``side`` px."""
    from PIL import Image

    pil = Image.fromarray(np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8), mode="L")
    scale = side / max(pil.size)
    size = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
    pil = pil.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _pct(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{100.0 * float(value):.{digits}f} %"
