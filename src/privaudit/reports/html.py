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
    thumbs = _Thumbnails(images or {})
    copies = data["checks"].get("copies")
    pairs = []
    if copies is not None:
        for item in copies.get("flagged", [])[:MAX_PAIRS_SHOWN]:
            pairs.append(
                {
                    **item,
                    "synthetic_src": thumbs.get("synthetic", item["synthetic_id"]),
                    "train_src": thumbs.get("train", item["train_id"]),
                }
            )
    return template.render(
        r=data,
        has_images=bool(images),
        copies=copies,
        pairs=pairs,
        max_pairs=MAX_PAIRS_SHOWN,
        max_skipped=MAX_SKIPPED_SHOWN,
        config_json=json.dumps(data["config"], indent=2),
        check_titles=_check_titles(),
    )


def _check_titles() -> dict[str, str]:
    from privaudit.checks import CHECKS

    return {name: CHECKS.get(name).title for name in CHECKS.names()}


class _Thumbnails:
    def __init__(self, images: Mapping[str, ImageSet]) -> None:
        self._images = images

    def get(self, role: str, image_id: str) -> str | None:
        images = self._images.get(role)
        if images is None:
            return None
        try:
            img = images.images[images.index_of(image_id)]
        except KeyError:
            return None
        return thumbnail_data_uri(img)


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
