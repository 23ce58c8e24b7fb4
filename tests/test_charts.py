"""Charts: SVG data URIs with alt text, deterministic, palette and no raster data."""

from __future__ import annotations

import base64

import pytest

from privaudit.reports import charts


def svg_of(chart: charts.Chart) -> str:
    prefix = "data:image/svg+xml;base64,"
    assert chart.data_uri.startswith(prefix)
    return base64.b64decode(chart.data_uri[len(prefix):]).decode("utf-8")


def test_histogram_is_vector_deterministic_and_described():
    args = ([0.8, 0.9, 0.95, 1.0], [5, 10, 3], [8, 12, 0])
    a = charts.similarity_histogram(*args, threshold=0.95)
    b = charts.similarity_histogram(*args, threshold=0.95)
    assert a == b  # same input, same bytes: reports are reproducible
    svg = svg_of(a)
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert "<image" not in svg  # never raster data, so a --no-images report can keep charts
    assert charts.OKABE_ITO["blue"].lower() in svg.lower() and charts.OKABE_ITO["vermillion"].lower() in svg.lower()
    assert "threshold 0.95" in a.alt and "18 synthetic images" in a.alt and "20 null scores" in a.alt
    assert "3 synthetic images lie in bins wholly above it" in a.alt
    assert "<dc:date>" not in svg  # no timestamp in the metadata
    assert a.caption


def test_histogram_without_threshold_and_validation():
    c = charts.similarity_histogram([0, 1], [1], [0], threshold=None)
    assert "threshold" not in c.alt
    with pytest.raises(ValueError, match="len\\(edges\\) == len\\(counts\\) \\+ 1"):
        charts.similarity_histogram([0, 1, 2], [1], [1], threshold=None)
    with pytest.raises(ValueError, match="unknown score"):
        charts.similarity_histogram([0, 1], [1], [0], threshold=None, score="cosine")
    # The axis and caption name the score: raw similarity, or the scores against non-members.
    assert "Histogram of similarity to the most similar training image" in c.alt and "near 1" in c.caption
    r = charts.similarity_histogram([0, 1], [1], [0], threshold=None, score="ratio")
    assert r.alt.startswith("Histogram of ratio score") and "far to the right" in r.caption


def test_roc_loglog_marks_the_resolvable_floor():
    curve = {"label": "DCR", "fpr": [0.0, 0.001, 0.01, 0.1, 1.0], "tpr": [0.0, 0.02, 0.05, 0.3, 1.0], "auc": 0.71}
    c = charts.roc_loglog([curve, {"label": "DOMIAS", "fpr": [0, 1], "tpr": [0, 1]}], n_negatives=100)
    svg = svg_of(c)
    assert "<image" not in svg and "lowest resolvable FPR 1/100" in svg
    # TPR at the floor FPR = 1/100 read from the curve: 0.05.
    assert "DCR, AUC 0.710, TPR 0.05 at FPR 0.01" in c.alt and "DOMIAS" in c.alt
    with pytest.raises(ValueError):
        charts.roc_loglog([])
    with pytest.raises(ValueError, match="equal length"):
        charts.roc_loglog([{"label": "x", "fpr": [0, 1], "tpr": [0]}])


def test_tradeoff_curve_with_a_non_private_reference():
    points = [{"x": 1.0, "y": 0.52, "ci_low": 0.48, "ci_high": 0.56}, {"x": 10.0, "y": 0.6}, {"x": float("inf"), "y": 0.9}]
    c = charts.tradeoff_curve([{"label": "DCR attack", "points": points}], ylabel="membership AUC (higher is worse)")
    svg = svg_of(c)
    assert "<image" not in svg and "no DP" in svg
    assert "DCR attack: 1 → 0.52, 10 → 0.6, no DP → 0.9" in c.alt
    with pytest.raises(ValueError, match="finite x"):
        charts.tradeoff_curve([{"label": "x", "points": [{"x": float("inf"), "y": 1}]}], ylabel="y")
