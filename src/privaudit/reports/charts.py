"""Charts for the report: matplotlib (Agg) rendered to inline SVG ``data:`` URIs.

Every chart function takes plain numbers (what ``results.json`` holds, so that ``privaudit
report`` can redraw a chart without recomputing anything) and returns a :class:`Chart`: the
image as a ``data:image/svg+xml`` URI, an alt text that states what the chart shows in words
and numbers (for screen readers, and for anyone reading the report without the picture), and a
caption. A check's template partial draws one with the ``figure`` macro of
``checks/_macros.html.j2``::

    {% from "checks/_macros.html.j2" import figure %}
    {{ figure(charts.roc_loglog([{"label": "DCR", "fpr": c.roc.fpr, "tpr": c.roc.tpr}],
                                n_negatives=c.roc.n_nonmembers)) }}

Design choices, and why:

* **SVG, not PNG**: sharp at any zoom and in print/PDF, small for line charts, and no raster
  data: a chart can never carry patient pixels, so a ``--no-images`` report keeps its charts.
  Text stays text (``svg.fonttype = none``), so it is searchable and scales with the page.
* **Deterministic output**: no date in the metadata and a fixed hash salt, so the same
  results give the same report bytes.
* **Colour-blind-safe**: the Okabe–Ito palette (Okabe & Ito, "Color Universal Design", 2008),
  and every series is also told apart by line style or hatching, so the charts read in
  greyscale print too.
* matplotlib is imported inside the functions: ``import privaudit`` stays light.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The Okabe–Ito colour-blind-safe palette.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}
#: Series colours in the order charts use them (real/reference first, then the audited set).
SERIES = (OKABE_ITO["blue"], OKABE_ITO["vermillion"], OKABE_ITO["bluish_green"], OKABE_ITO["reddish_purple"], OKABE_ITO["orange"], OKABE_ITO["sky_blue"])
#: Line styles paired with :data:`SERIES`, so that series differ without colour as well.
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (1, 1)))
INK = "#1d1d1f"
MUTED = "#5a5a60"


@dataclass(frozen=True)
class Chart:
    """A rendered chart.

    Attributes:
        data_uri: the SVG as a ``data:image/svg+xml;base64,...`` URI (for ``<img src>``).
        alt: what the chart shows, in words and numbers (for ``<img alt>``).
        caption: the caption under the chart.
    """

    data_uri: str
    alt: str
    caption: str


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display; never opens a window
    import matplotlib.pyplot as plt

    return plt


_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "privaudit",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 9,
    "axes.edgecolor": MUTED,
    "axes.labelcolor": INK,
    "axes.titlesize": 10,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
}


def _render(fig: Any) -> str:
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": "privaudit"}, bbox_inches="tight")
    finally:
        plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def similarity_histogram(
    edges: Sequence[float],
    synthetic_counts: Sequence[int],
    null_counts: Sequence[int],
    *,
    threshold: float | None,
    null_label: str = "real non-members (the null)",
    synthetic_label: str = "synthetic images",
    score: str = "raw",
) -> Chart:
    """Two histograms on shared bins, each as a share of its own set, with the threshold.

    Args:
        edges: bin edges (``len(counts) + 1`` increasing numbers).
        synthetic_counts: synthetic images per bin.
        null_counts: null scores per bin.
        threshold: the flagging threshold (drawn as a vertical line), or ``None``.
        score: what the bins count: ``"raw"`` (similarity to the nearest training image),
            ``"relative"`` or ``"ratio"`` (the copies check's scores against real non-members).

    Example:
        >>> c = similarity_histogram([0, .5, 1], [3, 1], [2, 2], threshold=0.9)
        >>> c.data_uri.startswith("data:image/svg+xml;base64,"), "threshold 0.9" in c.alt
        (True, True)
    """
    if score not in _SCORE_WORDS:
        raise ValueError(f"unknown score {score!r}; expected one of {sorted(_SCORE_WORDS)}")
    xlabel, what, near = _SCORE_WORDS[score]
    edges = [float(e) for e in edges]
    syn = [int(c) for c in synthetic_counts]
    null = [int(c) for c in null_counts]
    if len(edges) != len(syn) + 1 or len(syn) != len(null) or len(syn) == 0:
        raise ValueError(f"need len(edges) == len(counts) + 1 >= 2; got {len(edges)} edges, {len(syn)} and {len(null)} counts")
    n_syn, n_null = sum(syn), sum(null)
    plt = _pyplot()
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(6.4, 2.8))
        for counts, total, label, colour, hatch, ls in (
            (null, n_null, null_label, SERIES[0], None, "-"),
            (syn, n_syn, synthetic_label, SERIES[1], "///", "--"),
        ):
            if total == 0:
                continue
            share = [c / total for c in counts]
            ax.stairs(share, edges, fill=True, color=colour, alpha=0.18, hatch=hatch, linewidth=0)
            ax.stairs(share, edges, color=colour, linewidth=1.6, linestyle=ls, label=f"{label} (n = {total})")
        if threshold is not None and math.isfinite(threshold):
            ax.axvline(threshold, color=INK, linestyle=":", linewidth=1.4, label=f"threshold {threshold:.4g}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("share of the set")
        ax.legend(loc="upper left", fontsize=8)
        uri = _render(fig)
    above = _share_above(edges, syn, threshold)
    alt = (
        f"Histogram of {xlabel}: {n_null} null scores ({null_label}) and {n_syn} {synthetic_label}, "
        f"each as a share of its own set, from {edges[0]:.3g} to {edges[-1]:.3g}. "
        f"Null median bin {_median_bin(edges, null)}; synthetic median bin {_median_bin(edges, syn)}."
    )
    if threshold is not None and math.isfinite(threshold):
        alt += f" A dotted line marks the threshold {threshold:.4g}; {above} synthetic images lie in bins wholly above it."
    caption = (
        f"{what} The solid blue outline is real images of patients the generator never saw; the "
        "dashed, hatched vermillion outline is the synthetic set. Synthetic images to the right of "
        f"the dotted threshold are flagged; {near}"
    )
    return Chart(uri, alt, caption)


# x-axis label, what the chart shows, and what copies look like, per copies score.
_SCORE_WORDS = {
    "raw": (
        "similarity to the most similar training image",
        "How similar each image is to its most similar training image.",
        "a separate bump near 1 means near-copies.",
    ),
    "relative": (
        "relative score: similarity to training minus similarity to real non-members",
        "How much closer each image is to its most similar training image than to its most similar real non-member (0: equally close).",
        "a separate bump far to the right means near-copies.",
    ),
    "ratio": (
        "ratio score: log(distance to real non-members / distance to training)",
        "How much closer each image is to its most similar training image than to its most similar real non-member, "
        "as the log of the ratio of the two distances (0: equally close; 2.3: ten times closer to training).",
        "a separate bump far to the right means near-copies.",
    ),
}


def roc_loglog(
    curves: Sequence[Mapping[str, Any]],
    *,
    n_negatives: int | None = None,
    title: str | None = None,
) -> Chart:
    """ROC curves of attacks on log-log axes, with chance and the lowest resolvable FPR.

    Low false-positive rates are where an attack that exposes a few records with certainty
    shows (Carlini et al., "Membership inference attacks from first principles", S&P 2022): a
    linear ROC hides them behind an AUC near 0.5.

    Args:
        curves: one mapping per attack with ``label``, ``fpr`` and ``tpr`` (equal-length
            sequences, as from ``sklearn.metrics.roc_curve``), and optionally ``auc``.
        n_negatives: non-members the FPR is measured on; ``1 / n_negatives`` is the lowest FPR
            the sample resolves, drawn as a vertical line and used as the left edge.

    Example:
        >>> c = roc_loglog([{"label": "DCR", "fpr": [0, .1, 1], "tpr": [0, .3, 1], "auc": 0.6}], n_negatives=100)
        >>> "DCR" in c.alt and "0.01" in c.alt
        True
    """
    if not curves:
        raise ValueError("need at least one curve")
    floor = 1.0 / n_negatives if n_negatives else None
    plt = _pyplot()
    parts = []
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(4.6, 4.0))
        left = floor if floor else 1e-4
        for i, curve in enumerate(curves):
            fpr = [float(v) for v in curve["fpr"]]
            tpr = [float(v) for v in curve["tpr"]]
            if len(fpr) != len(tpr) or not fpr:
                raise ValueError(f"curve {curve.get('label')!r}: fpr and tpr must be non-empty and of equal length")
            left = min(left, min((f for f in fpr if f > 0), default=left))
            label = str(curve["label"])
            auc = curve.get("auc")
            ax.plot(
                [max(f, 1e-12) for f in fpr],
                [max(t, 1e-12) for t in tpr],
                color=SERIES[(i + 1) % len(SERIES)],
                linestyle=LINESTYLES[(i + 1) % len(LINESTYLES)],
                linewidth=1.6,
                label=label + (f" (AUC {auc:.3f})" if auc is not None else ""),
            )
            at = _tpr_at(fpr, tpr, floor) if floor else None
            parts.append(f"{label}" + (f", AUC {auc:.3f}" if auc is not None else "") + (f", TPR {at:.3g} at FPR {floor:.3g}" if at is not None else ""))
        grid = [10.0**e for e in range(math.floor(math.log10(left)), 1)]
        ax.plot(grid, grid, color=MUTED, linestyle=":", linewidth=1.0, label="chance")
        if floor:
            ax.axvline(floor, color=INK, linestyle="--", linewidth=0.9, label=f"lowest resolvable FPR 1/{n_negatives}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(left, 1.0)
        ax.set_ylim(left, 1.0)
        ax.set_xlabel("false-positive rate (non-members called members)")
        ax.set_ylabel("true-positive rate (members found)")
        if title:
            ax.set_title(title)
        ax.legend(loc="lower right", fontsize=8)
        uri = _render(fig)
    alt = "Log-log ROC curves of " + "; ".join(parts) + ". The dotted diagonal is chance."
    if floor:
        alt += f" With {n_negatives} non-members the lowest resolvable FPR is {floor:.3g}."
    caption = (
        "Each curve is an attack: how many members it finds (up) for how many non-members it "
        "wrongly accuses (right), on logarithmic axes so that the low false-positive region is "
        "visible. A curve above the dotted chance line at the left edge means some records are "
        "exposed with confidence, whatever the AUC."
    )
    return Chart(uri, alt, caption)


def tradeoff_curve(
    series: Sequence[Mapping[str, Any]],
    *,
    xlabel: str = "privacy budget ε (log scale)",
    ylabel: str,
    log_x: bool = True,
) -> Chart:
    """Points with 95 % error bars, one line per series: e.g. a quality or attack figure
    against the DP-SGD ε of the generator that produced each synthetic set.

    Args:
        series: one mapping per line with ``label`` and ``points``, each point a mapping with
            ``x``, ``y`` and optionally ``ci_low`` / ``ci_high`` (``None`` for no interval).
            Use ``x = inf`` for a non-private reference: it is drawn at the right edge, marked "no DP".
        ylabel: what ``y`` is, with its direction (e.g. "membership AUC (higher is worse)").

    Example:
        >>> c = tradeoff_curve([{"label": "FID", "points": [{"x": 1, "y": 80}, {"x": 10, "y": 40}]}], ylabel="FID")
        >>> "FID" in c.alt
        True
    """
    if not series:
        raise ValueError("need at least one series")
    plt = _pyplot()
    parts = []
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(5.6, 3.4))
        finite = [float(pt["x"]) for s_ in series for pt in s_["points"] if math.isfinite(float(pt["x"]))]
        if not finite:
            raise ValueError("need at least one point with a finite x")
        right = max(finite) * (4.0 if log_x else 1.15)
        for i, s_ in enumerate(series):
            pts = sorted(s_["points"], key=lambda pt: float(pt["x"]))
            if not pts:
                raise ValueError(f"series {s_.get('label')!r} has no points")
            xs = [float(pt["x"]) if math.isfinite(float(pt["x"])) else right for pt in pts]
            ys = [float(pt["y"]) for pt in pts]
            lo = [y - float(pt["ci_low"]) if pt.get("ci_low") is not None else 0.0 for y, pt in zip(ys, pts)]
            hi = [float(pt["ci_high"]) - y if pt.get("ci_high") is not None else 0.0 for y, pt in zip(ys, pts)]
            colour = SERIES[(i + 1) % len(SERIES)]
            ax.errorbar(xs, ys, yerr=[lo, hi], color=colour, linestyle=LINESTYLES[(i + 1) % len(LINESTYLES)],
                        marker="osD^v<"[i % 6], markersize=4, capsize=2, linewidth=1.4, label=str(s_["label"]))
            parts.append(f"{s_['label']}: " + ", ".join(f"{_x_words(pt['x'])} → {float(pt['y']):.3g}" for pt in pts))
        if any(not math.isfinite(float(pt["x"])) for s_ in series for pt in s_["points"]):
            ax.axvline(right, color=MUTED, linestyle=":", linewidth=0.8)
            ax.annotate("no DP", (right, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=8, color=MUTED)
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(loc="best", fontsize=8)
        uri = _render(fig)
    alt = f"{ylabel} against {xlabel}: " + "; ".join(parts) + ". Error bars are 95% intervals where known."
    caption = "Each point is one synthetic set; error bars are 95 % intervals. Moving right spends more privacy budget."
    return Chart(uri, alt, caption)


def _x_words(x: Any) -> str:
    return f"{float(x):.3g}" if math.isfinite(float(x)) else "no DP"


def _tpr_at(fpr: Sequence[float], tpr: Sequence[float], at: float) -> float | None:
    best = None
    for f, t in zip(fpr, tpr):
        if f <= at + 1e-15:
            best = t if best is None else max(best, t)
    return best


def _share_above(edges: Sequence[float], counts: Sequence[int], threshold: float | None) -> int:
    if threshold is None or not math.isfinite(threshold):
        return 0
    return sum(c for lo, c in zip(edges[:-1], counts) if lo >= threshold)


def _median_bin(edges: Sequence[float], counts: Sequence[int]) -> str:
    total = sum(counts)
    if total == 0:
        return "n/a"
    running = 0
    for i, c in enumerate(counts):
        running += c
        if running * 2 >= total:
            return f"{edges[i]:.3g} to {edges[i + 1]:.3g}"
    return "n/a"  # pragma: no cover
