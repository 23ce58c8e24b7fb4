"""Report stage: the HTML report (JSON serialisation lives in :mod:`privaudit.results`)."""

from privaudit.reports.html import render_html, thumbnail_data_uri

__all__ = ["render_html", "thumbnail_data_uri"]
