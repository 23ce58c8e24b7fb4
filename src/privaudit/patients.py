"""One view per training patient: copies, membership and re-identification joined.

An ethics board asks "which patients does this release expose, and how?", not "what is the copy
rate?". :func:`patient_view` joins what the checks found about each training patient:

* ``copies``: the patient's training scans that synthetic images were flagged as copies of, and
  those synthetic images;
* ``reid``: the synthetic images the identity probe linked to the patient;
* ``membership``: the patient's membership p-value when it is among the exposed (its highest
  membership score is above all but ``exposure_share`` of non-member patients).

It works on the checks' ``results.json`` form, so ``privaudit report`` shows the same table
without recomputing. A patient appears only when some check found something; a check that was
not run or not assessed contributes nothing, and the report says which checks fed the table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Rows kept (the most exposed first) and synthetic ids listed per row and kind.
MAX_ROWS = 200
MAX_IDS = 5


@dataclass(frozen=True)
class PatientRow:
    """What the checks found about one training patient.

    Attributes:
        train_patient_id: the training patient.
        n_copied_scans: distinct training scans of the patient that flagged copies resemble.
        n_copies: synthetic images flagged as copies of those scans.
        n_linked: synthetic images the ``reid`` check linked to the patient.
        membership_p_value: the patient's membership p-value when it is listed as exposed by the
            ``membership`` check, else ``None``.
        copy_ids: some of the copying synthetic images.
        linked_ids: some of the linked synthetic images.
    """

    train_patient_id: str
    n_copied_scans: int
    n_copies: int
    n_linked: int
    membership_p_value: float | None
    copy_ids: tuple[str, ...] = field(default=())
    linked_ids: tuple[str, ...] = field(default=())


def patient_view(checks: Mapping[str, Mapping[str, Any]]) -> tuple[PatientRow, ...]:
    """Join the checks' findings per training patient (see the module docstring).

    Args:
        checks: check results in their ``results.json`` form, keyed by check name.

    Returns:
        One row per patient with any finding, most exposed first (synthetic images involved,
        then the membership p-value), at most :data:`MAX_ROWS`.

    Example:
        >>> rows = patient_view({"copies": {"status": "assessed", "flagged": [
        ...     {"synthetic_id": "s1", "train_id": "t1", "train_patient_id": "P1"}]}})
        >>> rows[0].train_patient_id, rows[0].n_copies
        ('P1', 1)
    """
    copies: dict[str, list[tuple[str, str]]] = {}
    linked: dict[str, list[str]] = {}
    member: dict[str, float] = {}
    c = checks.get("copies")
    if c and c.get("status") == "assessed":
        for f in c.get("flagged", ()):
            pid = f.get("train_patient_id")
            if pid is not None:
                copies.setdefault(pid, []).append((f["synthetic_id"], f["train_id"]))
    r = checks.get("reid")
    if r and r.get("status") == "assessed":
        for p in r.get("patients", ()):
            ids = [e["synthetic_id"] for e in p.get("evidence", ())]
            # n_linked counts every link; the evidence lists the strongest few.
            linked[p["train_patient_id"]] = ids + [""] * (int(p["n_linked"]) - len(ids))
    m = checks.get("membership")
    if m and m.get("status") == "assessed" and m.get("unit") == "patient":
        for e in m.get("exposed_patients", ()):
            member[e["train_patient_id"]] = float(e["p_value"])
    rows = []
    for pid in set(copies) | set(linked) | set(member):
        pairs = copies.get(pid, [])
        links = linked.get(pid, [])
        rows.append(
            PatientRow(
                train_patient_id=pid,
                n_copied_scans=len({t for _, t in pairs}),
                n_copies=len(pairs),
                n_linked=len(links),
                membership_p_value=member.get(pid),
                copy_ids=tuple(s for s, _ in pairs[:MAX_IDS]),
                linked_ids=tuple(s for s in links[:MAX_IDS] if s),
            )
        )
    rows.sort(key=lambda x: (-(x.n_copies + x.n_linked), x.membership_p_value if x.membership_p_value is not None else 2.0, x.train_patient_id))
    return tuple(rows[:MAX_ROWS])
