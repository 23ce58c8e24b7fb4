"""The HTML report of a DP sweep: the ε table and one trade-off chart per figure."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def curve_series(data: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every metric assessed at one point or more, as chart points ``{x, y, ci_low, ci_high, n}``
    keyed ``"<check>.<metric>"`` (whatever checks ran: the sweep never names them)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for p in data["points"]:
        x = math.inf if p["epsilon"] is None else float(p["epsilon"])
        for key, m in p["metrics"].items():
            if m.get("value") is None:
                continue
            out.setdefault(key, []).append({"x": x, "y": m["value"], "ci_low": m.get("ci_low"), "ci_high": m.get("ci_high"), "n": m.get("n")})
    return out


def render_dp_html(data: Mapping[str, Any]) -> str:
    """Render ``dp_report.html`` from the ``dp_results.json`` content."""
    from privaudit.checks.base import metric_catalog
    from privaudit.reports import charts
    from privaudit.reports.html import template_env

    catalog = metric_catalog()
    figures = []
    for key, pts in sorted(curve_series(data).items()):
        if not any(math.isfinite(pt["x"]) for pt in pts):
            continue
        spec = catalog.get(key)
        direction = "" if spec is None else (" (higher is worse)" if spec.direction.value == "higher_is_worse" else " (higher is better)")
        chart = charts.tradeoff_curve([{"label": key, "points": pts}], ylabel=key + direction)
        figures.append({"key": key, "chart": chart, "description": "" if spec is None else spec.description})
    eps_chart = None
    eps_pts = [p for p in data["points"] if p["private"]]
    if eps_pts:
        series = [{"label": "accountant ε (upper bound)", "points": [{"x": p["epsilon"], "y": p["training"]["epsilon"]} for p in eps_pts]}]
        emp = [p for p in data["points"] if p.get("empirical")]
        if emp:
            series.append({
                "label": f"empirical lower bound ({int(round(100 * emp[0]['empirical']['confidence']))} %)",
                "points": [{"x": math.inf if p["epsilon"] is None else p["epsilon"], "y": p["empirical"]["epsilon_lb"]} for p in emp],
            })
        eps_chart = charts.tradeoff_curve(series, ylabel="ε per image")
    return template_env().get_template("dp_report.html.j2").render(r=data, figures=figures, eps_chart=eps_chart)
