"""The wheel ships the templates, the schema and the default policy."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_package_data(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("privaudit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "privaudit/reports/templates/report.html.j2",
        "privaudit/reports/templates/checks/copies.html.j2",
        "privaudit/reports/templates/checks/metadata.html.j2",
        "privaudit/reports/templates/checks/_generic.html.j2",
        "privaudit/schemas/results.schema.json",
        "privaudit/policies/default.toml",
        "privaudit/py.typed",
    ):
        assert needed in names
    assert not any(n.startswith("tests/") for n in names)


def test_import_is_light():
    code = "import sys, privaudit; print(privaudit.__version__); assert 'torch' not in sys.modules and 'faiss' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
