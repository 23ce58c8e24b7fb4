"""The self-contained HTML report, rendered from ``reports/templates/`` with jinja2.

Self-contained means one file with no external requests: inline CSS, thumbnails as ``data:``
URIs, no scripts.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from privaudit.data.imageset import ImageSet
from privaudit.results import AuditResult

#: Flagged pairs shown as thumbnails; all of them are listed in results.json.
MAX_PAIRS_SHOWN = 60
#: Skipped files listed; the count is always shown.
MAX_SKIPPED_SHOWN = 100
THUMBNAIL_SIDE = 112


def render_html(result: AuditResult, *, images: Mapping[str, ImageSet] | None = None) -> str:
    """Render the report for ``result``.

    Args:
        result: the audit result.
        images: the audited image sets by role, for thumbnails of flagged pairs; without them
            the pairs are listed by id only.

    Each check's section comes from ``templates/checks/<name>.html.j2`` (or a generic table of
    its metrics), rendered with ``c`` (its result as a dict), ``title``, and ``thumb(role, id)``,
    which gives a thumbnail ``data:`` URI or ``None``.
    """
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("privaudit", "reports/templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    env.filters["pct"] = _pct
    template = env.get_template("report.html.j2")
    data = result.to_dict()
    return template.render(
        r=data,
        has_images=bool(images),
        thumb=_Thumbnails(images or {}).get,
        max_pairs=MAX_PAIRS_SHOWN,
        max_skipped=MAX_SKIPPED_SHOWN,
        config_json=json.dumps(data["config"], indent=2),
        check_titles=_check_titles(),
    )


def _check_titles() -> dict[str, str]:
    from privaudit.checks import CHECKS

    return {name: CHECKS.get(name).title for name in CHECKS.names()}


class _Thumbnails:
    """Thumbnails on demand, each image encoded once."""

    def __init__(self, images: Mapping[str, ImageSet]) -> None:
        self._images = images
        self._done: dict[tuple[str, str], str | None] = {}

    def get(self, role: str, image_id: str) -> str | None:
        key = (role, image_id)
        if key not in self._done:
            images = self._images.get(role)
            try:
                self._done[key] = None if images is None else thumbnail_data_uri(images.images[images.index_of(image_id)])
            except KeyError:
                self._done[key] = None
        return self._done[key]


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
