"""``--no-images``: a shareable ``results.json`` and report, with identifiers pseudonymised.

Image ids are file paths, and paths often hold record numbers, names or dates; patient ids are
identifiers by definition. :func:`pseudonymise` replaces them in the ``results.json`` form:

* every value under a key ending in ``_id`` or ``_ids`` (``synthetic_id``, ``train_id``,
  ``image_id``, ``train_patient_id``, ...): image ids become ``img-0001``, ``img-0002``, ...,
  patient ids (keys containing ``patient``) ``patient-001``, ... A check that records
  identifiers must name their fields that way (the tests hold every check to it);
* each input's ``source`` path becomes ``<role> set (path withheld)``, and skipped files'
  paths become ``<role>-skipped-001``, ...; the policy and waivers paths keep only their file
  name;
* then any remaining text (summaries, warnings, reasons) is searched for the originals of 4 or
  more characters, which are replaced too.

Pseudonyms are numbered in order of first appearance in the results, so the same results give
the same pseudonyms: the data owner can map them back by running ``privaudit report`` on the full
``results.json`` with and without ``--no-images``. No mapping is written next to the shareable
files. Reviewer names in waivers are kept: a waiver is only worth its reviewer's name.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

#: Originals shorter than this are not searched for in free text ("17" would hit "17 of 200").
MIN_FREE_TEXT_LENGTH = 4


class _Pseudonyms:
    def __init__(self) -> None:
        self.maps: dict[str, dict[str, str]] = {}

    def get(self, kind: str, original: str, fmt: Callable[[int], str]) -> str:
        table = self.maps.setdefault(kind, {})
        if original not in table:
            table[original] = fmt(len(table) + 1)
        return table[original]


def pseudonymise(results: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``results`` (``results.json`` form) with identifiers pseudonymised.

    Example:
        >>> r = {"inputs": {}, "checks": {"copies": {"flagged": [{"synthetic_id": "2024-05-01/MRN123.png", "train_patient_id": "MRN123"}]}}}
        >>> out = pseudonymise(r)
        >>> out["checks"]["copies"]["flagged"], out["pseudonymised"]
        ([{'synthetic_id': 'img-0001', 'train_patient_id': 'patient-001'}], True)
    """
    if results.get("pseudonymised"):
        return copy.deepcopy(results)
    out = copy.deepcopy(results)
    names = _Pseudonyms()
    originals: dict[str, str] = {}

    for role, summary in out.get("inputs", {}).items():
        if isinstance(summary, dict):
            originals[summary.get("source", "")] = f"{role} set (path withheld)"
            summary["source"] = f"{role} set (path withheld)"
            for f in summary.get("skipped", ()):
                new = names.get(f"skipped-{role}", f["path"], lambda i, r=role: f"{r}-skipped-{i:03d}")
                originals[f["path"]] = new
                f["path"] = new

    def by_key(node: Any) -> Any:
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith(("_id", "_ids")):
                    node[key] = _replace_ids(key, value, names, originals)
                else:
                    by_key(value)
        elif isinstance(node, list):
            for value in node:
                by_key(value)
        return node

    by_key(out)
    run = out.get("run")
    if isinstance(run, dict) and run.get("cache_dir"):
        run["cache_dir"] = "(withheld)"  # a local path, often with a user name in it
    cluster = run.get("cluster") if isinstance(run, dict) else None
    if isinstance(cluster, dict) and cluster.get("address"):
        cluster["address"] = "(withheld)"  # a host name of the site's network
    verdict = out.get("verdict", {})
    if isinstance(verdict, dict):
        if isinstance(verdict.get("policy_source"), str) and verdict["policy_source"] != "default":
            verdict["policy_source"] = _basename(verdict["policy_source"])
        review = verdict.get("review")
        if isinstance(review, dict) and isinstance(review.get("source"), str):
            review["source"] = _basename(review["source"])

    searchable = sorted((o for o in originals if len(o) >= MIN_FREE_TEXT_LENGTH), key=len, reverse=True)
    if searchable:
        pattern = re.compile("|".join(re.escape(o) for o in searchable))

        def free_text(node: Any) -> Any:
            if isinstance(node, dict):
                return {k: free_text(v) for k, v in node.items()}
            if isinstance(node, list):
                return [free_text(v) for v in node]
            if isinstance(node, str):
                return pattern.sub(lambda m: originals[m.group(0)], node)
            return node

        out = free_text(out)
    out["pseudonymised"] = True
    return out


def _replace_ids(key: str, value: Any, names: _Pseudonyms, originals: dict[str, str]) -> Any:
    if isinstance(value, list):
        return [_replace_ids(key, v, names, originals) for v in value]
    if isinstance(value, dict):  # e.g. a waiver's {"synthetic_id": ..., "train_id": ...}
        return {k: _replace_ids(k if k.endswith(("_id", "_ids")) else key, v, names, originals) for k, v in value.items()}
    if not isinstance(value, str):
        return value
    if "patient" in key:
        new = names.get("patient", value, lambda i: f"patient-{i:03d}")
    else:
        new = names.get("image", value, lambda i: f"img-{i:04d}")
    originals.setdefault(value, new)
    return new


def _basename(path: str) -> str:
    return re.split(r"[\\/]", path)[-1] or path
