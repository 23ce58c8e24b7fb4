"""The report as PDF, printed by headless Chromium (``privaudit report --pdf``).

Chromium is a program, not a Python package, so it is looked up at run time: ``$PRIVAUDIT_CHROMIUM``
if set, else ``chromium``, ``chromium-browser``, ``google-chrome`` or ``google-chrome-stable`` on
``PATH``. It prints the report's own print stylesheet (A4, 14 mm margins, no browser header or
footer). It runs with networking features off and a throw-away profile; the report makes no
requests anyway.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from privaudit.errors import MissingProgramError, OutputError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Flags for a quiet, offline, throw-away headless browser.
HEADLESS_FLAGS = (
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
)
TIMEOUT_S = 180


def find_chromium() -> str:
    """The Chromium executable, or a :class:`MissingProgramError` naming what was tried."""
    env = os.environ.get("PRIVAUDIT_CHROMIUM")
    if env:
        found = shutil.which(env)
        if found is None:
            raise MissingProgramError(f"PRIVAUDIT_CHROMIUM={env} is not an executable program")
        return found
    for name in CANDIDATES:
        found = shutil.which(name)
        if found is not None:
            return found
    raise MissingProgramError(
        f"--pdf needs Chromium, which was not found (looked for {', '.join(CANDIDATES)} on PATH); "
        "install it (Debian/Ubuntu: apt-get install chromium) or set PRIVAUDIT_CHROMIUM to its path"
    )


def browser_flags(profile: str | os.PathLike[str]) -> list[str]:
    """Headless flags with a throw-away profile; ``--no-sandbox`` only when running as root,
    where Chromium refuses to start without it (the report has no scripts to contain)."""
    flags = [*HEADLESS_FLAGS, f"--user-data-dir={profile}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")
    return flags


def html_to_pdf(html_path: str | os.PathLike[str], pdf_path: str | os.PathLike[str]) -> Path:
    """Print ``html_path`` to ``pdf_path`` (written atomically) with headless Chromium."""
    browser = find_chromium()
    source = Path(html_path).resolve()
    target = Path(pdf_path)
    with tempfile.TemporaryDirectory(prefix="privaudit-pdf-") as tmp:
        out = Path(tmp) / "report.pdf"
        cmd = [browser, *browser_flags(Path(tmp) / "profile"), "--no-pdf-header-footer", f"--print-to-pdf={out}", source.as_uri()]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise OutputError(f"Chromium did not finish printing {source} within {TIMEOUT_S} s") from None
        if not out.exists() or out.stat().st_size == 0 or not out.read_bytes().startswith(b"%PDF"):
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise OutputError(f"Chromium ({browser}) did not produce a PDF (exit {done.returncode}: {last})")
        from privaudit._util import atomic_write_bytes

        atomic_write_bytes(target, out.read_bytes())
    return target
