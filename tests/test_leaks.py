"""Nothing leaked: header values never reach logs, results.json or the report; no network at run time.

Both tests run the installed ``privaudit`` script in a subprocess, so that what they check is
what a user sees: the real logging and warning set-up (pytest's own would hide warnings), every
library's debug logs under ``--debug``, and a process that starts without the test's imports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, PngImagePlugin

from conftest import write_dicom

SCRIPT = Path(sys.executable).with_name("privaudit")

# Distinctive header values: none of them may appear anywhere privaudit writes or prints.
SECRETS = {
    "PatientName": "Zyxwvut^Qwertyuiop",
    "PatientID": "PIDSECRET4711",
    "OtherPatientIDs": "OTHERIDSECRET",
    "PatientBirthDate": "19010203",
    "StudyDate": "SECRETDATE",  # not a valid DA: pydicom warns and logs it when read
    "AccessionNumber": "ACCSECRET99",
    "InstitutionName": "SECRETINSTITUTE",
    "ImageComments": "SECRETCOMMENT patient was anxious",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.987654321987",
    "ReferringPhysicianName": "Doctor^Secretsson",
}
PRIVATE = "SECRETPRIVATETAG"
PNG_TEXT = "SECRETPNGCHUNK"
TIFF_TEXT = "SECRETTIFFDESCRIPTION"
EVERY_SECRET = [*SECRETS.values(), "Zyxwvut", "Qwertyuiop", "Secretsson", PRIVATE, PNG_TEXT, TIFF_TEXT, "987654321987"]


def _dicom(path: Path, rng: np.random.Generator, **kwargs) -> Path:
    attributes = {k: v for k, v in SECRETS.items() if k not in ("PatientName", "PatientID")}
    attributes[(0x0009, 0x0010, "LO")] = "SECRET CREATOR"
    attributes[(0x0009, 0x1001, "LO")] = PRIVATE
    return write_dicom(path, rng.integers(0, 4000, (16, 16)), patient_name=SECRETS["PatientName"], patient_id=SECRETS["PatientID"], attributes=attributes, **kwargs)


def _inputs(tmp: Path) -> dict[str, Path]:
    rng = np.random.default_rng(3)
    for i in range(6):
        _dicom(tmp / "train" / f"t{i}.dcm", rng)
    _dicom(tmp / "train" / "broken.dcm", rng, transfer_syntax="1.2.840.10008.1.2.5")  # skipped, with a reason
    for i in range(3):  # synthetic DICOMs with the training header: the metadata check must say so
        _dicom(tmp / "synthetic" / f"s{i}.dcm", rng)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", PNG_TEXT)
    info.add_text(PNG_TEXT, "keyword chosen by the writer")
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(tmp / "synthetic" / "s.png", pnginfo=info)
    tifffile.imwrite(tmp / "synthetic" / "s.tif", rng.integers(0, 256, (16, 16), dtype=np.uint8), description=TIFF_TEXT, metadata=None)
    return {"train": tmp / "train", "synthetic": tmp / "synthetic"}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")  # writing the invalid date on purpose
def test_dicom_header_values_never_reach_logs_json_or_html(tmp_path):
    paths = _inputs(tmp_path)
    raw = b"".join(p.read_bytes() for folder in paths.values() for p in folder.iterdir())
    for secret in EVERY_SECRET:  # the inputs really hold them, so the test can fail
        assert secret.encode() in raw, secret
    out = tmp_path / "out"
    done = subprocess.run(
        [str(SCRIPT), "audit", "--train", str(paths["train"]), "--synthetic", str(paths["synthetic"]), "--out", str(out), "--max-skipped", "0.2", "--debug"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1, done.stderr  # the metadata check fails the copied headers
    assert "DEBUG" in done.stderr  # --debug was on: every library's debug log was shown
    written = {p.name: p.read_text() for p in out.iterdir()}
    assert set(written) == {"results.json", "report.html"}
    for where, text in {"stdout": done.stdout, "stderr": done.stderr, **written}.items():
        for secret in EVERY_SECRET:
            assert secret not in text, f"{secret!r} leaked into {where}"
    # Not vacuous: the headers were read and reported, by field name.
    meta = json.loads(written["results.json"])["checks"]["metadata"]
    fields = {f["field"]: f["n_matching_training"] for f in meta["fields"]}
    assert fields["DICOM PatientName"] == 3 and fields["DICOM StudyInstanceUID"] == 3 and fields["DICOM private tags"] == 3
    assert {"PNG text Comment", "PNG text (custom keyword)", "TIFF ImageDescription", "DICOM StudyDate"} <= set(fields)
    skipped = json.loads(written["results.json"])["inputs"]["train"]["skipped"]
    assert [s["path"] for s in skipped] == ["broken.dcm"]


NETWORK_GUARD = r'''
import sys

_log = open(__import__("os").environ["PRIVAUDIT_TEST_NETLOG"], "a")


def _guard(event, args):
    # Every attempt to resolve, connect, bind or send; sockets of the AF_UNIX family are local.
    if event.startswith(("socket.", "urllib.", "http.", "ftplib.", "smtplib.", "webbrowser.")):
        if event == "socket.__new__" and len(args) > 1 and args[1] == 1:  # AF_UNIX
            return
        _log.write(f"{event} {args!r}\n")
        _log.flush()
        raise OSError(f"network access blocked by the test: {event}")


sys.addaudithook(_guard)
'''


def _network_namespace() -> list[str]:
    """``unshare -n`` when this machine lets us create a network namespace (root, or user
    namespaces), else nothing: the audit hook below still runs."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    probe = subprocess.run([unshare, "-n", "true"], capture_output=True, timeout=30)
    return [unshare, "-n"] if probe.returncode == 0 else []


@pytest.mark.slow
def test_the_demo_runs_without_network(tmp_path):
    """The whole demo (phantoms, both audits, reports) with every network call blocked: inside
    the process by an audit hook (from interpreter start, via sitecustomize), and, where the
    machine allows it, in an empty network namespace that also catches native code."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(NETWORK_GUARD)
    netlog = tmp_path / "network.log"
    env = {**os.environ, "PYTHONPATH": str(hook), "PRIVAUDIT_TEST_NETLOG": str(netlog)}
    namespace = _network_namespace()
    done = subprocess.run([*namespace, str(SCRIPT), "demo", "--out", str(tmp_path / "demo")], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    assert "NOTE" not in done.stdout  # the leaky audit failed and the clean one passed
    assert not netlog.exists() or netlog.read_text() == "", netlog.read_text()
    # The guard is live in the child (not vacuous): the same hook refuses a lookup there.
    probe = subprocess.run([sys.executable, "-c", "import socket; socket.getaddrinfo('localhost', 80)"], capture_output=True, text=True, timeout=60, env=env)
    assert probe.returncode != 0 and "network access blocked by the test" in probe.stderr
