"""The HTML report: self-contained, escaped, honest about holding patient images."""

from __future__ import annotations

import dataclasses
import re
import shutil

import pytest

from privaudit.data import ImageSet
from privaudit.pipeline import audit
from privaudit.reports import render_html


@pytest.fixture(scope="module")
def leaky_html(leaky_result, study) -> str:
    return render_html(leaky_result, images={"train": study.train, "synthetic": study.leaky, "holdout": study.holdout})


def test_report_has_verdict_banner_and_thumbnails(leaky_html, leaky_result):
    assert "This report contains patient images" in leaky_html
    assert "<title>privaudit report: FAIL</title>" in leaky_html
    n = leaky_result.checks["copies"].n_flagged
    assert leaky_html.count('src="data:image/png;base64,') == 3 * n  # training, synthetic, difference
    assert f"Flagged pairs ({n})" in leaky_html
    for reason in leaky_result.verdict.reasons:
        assert reason.message in leaky_html


def test_the_copies_section_says_how_the_evidence_is_combined(leaky_html, leaky_result):
    # The default: one embedding space (pixels) and the aligned comparison, weighted 1/3 and 2/3.
    copies = leaky_result.checks["copies"]
    assert copies.aligned.weight == pytest.approx(2 / 3)
    text = re.sub(r"\s+", " ", leaky_html.replace("&#8239;", " ").replace("\u202f", " "))
    assert "in the embedding space and in the aligned comparison, combined by the smallest of their p-values, each divided by its weight (67 % for the aligned comparison, 33 % for the embedding space" in text
    # At weight 1 the aligned comparison alone; nothing is combined.
    alone = dataclasses.replace(copies, aligned=dataclasses.replace(copies.aligned, weight=1.0))
    html = render_html(dataclasses.replace(leaky_result, checks={**leaky_result.checks, "copies": alone}), images=None)
    assert "against it in the aligned comparison alone (<code>copies.aligned_weight</code> = 1" in html
    assert "combined by the smallest p-value" not in html


def test_report_makes_no_external_requests(leaky_html):
    # Every src/href is a data: URI or an in-page anchor; no scripts, no external stylesheets.
    for attr in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', leaky_html):
        assert attr.startswith(("data:", "#")), attr
    assert "<script" not in leaky_html.lower()
    assert "@import" not in leaky_html and "url(" not in leaky_html


def test_report_without_images_lists_ids_and_drops_the_banner(leaky_result):
    html = render_html(leaky_result, images=None)
    assert "data:image/png" not in html and "This report contains patient images" not in html
    first = leaky_result.checks["copies"].flagged[0]
    assert first.synthetic_id in html and first.train_id in html


def test_ids_are_escaped(study):
    hostile = '<script>alert("x")</script>.png'
    synthetic = ImageSet(images=(study.train.images[0],), ids=(hostile,), source="hostile")
    result = audit(study.train, synthetic, study.holdout)
    html = render_html(result, images={"train": study.train, "synthetic": synthetic})
    assert hostile not in html and "&lt;script&gt;" in html


def test_skipped_files_are_listed(study_files, tmp_path):
    holdout_dir = study_files["holdout"].parent / "holdout"
    folder = tmp_path / "holdout"
    shutil.copytree(holdout_dir, folder)
    (folder / "zzz_broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    audit(study_files["train"], study_files["clean"], folder, out=out)
    html = (out / "report.html").read_text()
    assert "Skipped files in holdout (1)" in html and "zzz_broken.png" in html and "not a recognised image" in html


def test_a_check_without_its_own_partial_gets_the_generic_section(leaky_result):
    """Checks added by others render before they have a template: summary, status and metrics."""
    data = leaky_result.to_dict()
    data["checks"]["newcheck"] = {
        "check": "newcheck", "status": "not_assessed", "reason": "needs --holdout", "warnings": ["a caveat"],
        "summary": "New check: not assessed (needs --holdout).",
        "metrics": {"thing_rate": {"value": None, "n": 0, "ci_low": None, "ci_high": None, "direction": "higher_is_worse"}},
    }
    html = render_html(data)
    assert 'id="check-newcheck"' in html and 'href="#check-newcheck"' in html
    assert "Not assessed:</strong> needs --holdout" in html and "a caveat" in html
    assert "<code>thing_rate</code>" in html and "Policy metrics of this check" in html


def test_report_has_a_chart_with_alt_text_and_accessible_tables(leaky_html):
    charts = re.findall(r'<img src="data:image/svg\+xml;base64,[^"]+" alt="([^"]+)"', leaky_html)
    # The axis names the score the check used (the ratio score by default), not "similarity".
    assert len(charts) == 1 and "Histogram of ratio score" in charts[0] and "threshold" in charts[0]
    assert "log of the ratio of the two distances" in leaky_html
    for table in re.findall(r"<table>.*?</table>", leaky_html, flags=re.S):
        assert "<th" in table  # every table has header cells
    # Status is never colour alone: a symbol and a word.
    assert "✗ fail</span>" in leaky_html


def test_the_copies_section_names_the_search_index_and_its_agreement(study, monkeypatch):
    """The index line for exact and approximate search, and the warning when the approximate
    search missed tail images (a coarse IVF, as in test_copies)."""
    from privaudit.config import AuditConfig

    def html_of(index: str) -> str:
        cfg = AuditConfig.from_dict({"embedders": ["pixels"], "checks": ["copies"], "copies": {"index": index, "positive_control": 0, "bootstrap": 0}})
        return render_html(audit(study.train, study.leaky, study.holdout, config=cfg), images=None)

    exact = html_of("exact")
    assert re.search(r"<th scope=\"row\">Search</th><td class=\"num\">exact over \d+ training images", exact)
    assert "Agreement with exact search" not in exact
    ivf = html_of("ivf")
    assert "approximate (IVF," in ivf and "re-ranked exactly" in ivf and "as configured (ivf)" in ivf
    assert re.search(r"(\d+) of \1 tail images found", ivf) and "it was not" not in ivf

    import privaudit.search as search

    monkeypatch.setattr(search, "IVF_NPROBE", 1)
    monkeypatch.setattr(search, "IVF_LISTS_PER_SQRT", 1.0)
    monkeypatch.setattr(search, "IVF_KMEANS_ITERATIONS", 1)
    coarse = html_of("ivf")
    assert "it was not: see the warning above" in coarse and "Approximate search (IVF" in coarse
