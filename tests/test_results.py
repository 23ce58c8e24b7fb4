"""results.json: the schema, determinism, and what it never contains."""

from __future__ import annotations

import copy
import json

import jsonschema
import numpy as np
import pytest

from privaudit.config import AuditConfig
from privaudit.pipeline import audit
from privaudit.results import SCHEMA_VERSION, results_schema


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = results_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_every_result_validates(validator, leaky_result, clean_result, study):
    results = [
        leaky_result,
        clean_result,
        audit(study.train, study.leaky),  # no holdout: fallback null
        audit(study.train, study.leaky, study.holdout.subset(range(20))),  # not assessed
        # Approximate search: the copies check's search record with its measured agreement.
        audit(study.train, study.leaky, study.holdout, config=AuditConfig.from_dict({"embedders": ["pixels"], "copies": {"index": "ivf"}})),
    ]
    for result in results:
        validator.validate(json.loads(result.to_json()))


def test_schema_is_strict(validator, leaky_result):
    data = json.loads(leaky_result.to_json())
    for mutate in (
        lambda d: d.update(surprise=1),
        lambda d: d["checks"]["copies"].update(surprise=1),
        lambda d: d["checks"]["copies"]["flagged"][0].update(sha256="00"),
        lambda d: d["inputs"]["train"].update(n_images=0),
        lambda d: d["verdict"].update(status="maybe"),
    ):
        broken = copy.deepcopy(data)
        mutate(broken)
        assert not validator.is_valid(broken)


def test_not_assessed_figures_are_null_not_nan(study):
    result = audit(study.train, study.leaky, study.holdout.subset(range(20)))
    text = result.to_json()
    assert "NaN" not in text
    data = json.loads(text)
    assert data["checks"]["copies"]["metrics"]["copy_rate"]["value"] is None
    assert data["checks"]["copies"]["status"] == "not_assessed"


def test_same_seed_gives_the_same_results_json(study_files, tmp_path):
    runs = []
    for name in ("a", "b"):
        audit(study_files["train"], study_files["leaky"], study_files["holdout"], out=tmp_path / name)
        data = json.loads((tmp_path / name / "results.json").read_text())
        data.pop("created_at")
        data.pop("run")  # cache use differs between a first and a second run
        runs.append(data)
    assert runs[0] == runs[1]
    assert runs[0]["checks"]["copies"]["n_flagged"] > 0


def test_seed_and_config_are_recorded(study):
    result = audit(study.train, study.clean, study.holdout, config=AuditConfig(seed=7))
    data = result.to_dict()
    assert data["seed"] == 7 and data["config"]["seed"] == 7
    assert data["config"]["check_options"]["copies"]["alpha"] == 0.01
    assert [e["name"] for e in data["embedders"]] == ["pixels"]  # the aligned comparison ran: no copydetect
    assert all(len(e["fingerprint"]) == 16 for e in data["embedders"])
    assert set(data["environment"]) >= {"python", "numpy", "torch", "faiss"}


def test_only_one_hash_per_set_never_per_image(leaky_result, study):
    text = leaky_result.to_json()
    data = json.loads(text)
    hashes = {v["content_sha256"] for v in data["inputs"].values()}
    assert len(hashes) == 3
    per_image = {d.hex() for d in study.train.pixel_digests[:50]}
    assert not any(h in text for h in per_image)


def test_flagged_pairs_name_ids_and_similarity(leaky_result):
    flagged = leaky_result.to_dict()["checks"]["copies"]["flagged"]
    first = flagged[0]
    assert set(first) == {
        "synthetic_id", "train_id", "train_patient_id", "similarity", "p_value", "q_value",
        "evidence", "ssim", "likely_transform",
    }
    assert [e["embedder"] for e in first["evidence"]] == ["pixels", "aligned"]  # the spaces, then the aligned comparison
    assert first["synthetic_id"].startswith("synthetic/") and first["train_id"].startswith("train/")
    sims = [f["similarity"] for f in flagged]
    assert np.all(np.isfinite(sims))


def _properties(node, path=""):
    """Every (path, schema) of a named property in the schema, $defs included."""
    if not isinstance(node, dict):
        return
    for key, value in node.get("properties", {}).items():
        yield f"{path}/{key}", value
        yield from _properties(value, f"{path}/{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from _properties(node[key], f"{path}/{key}")
    for key, value in node.get("$defs", {}).items():
        yield from _properties(value, f"{path}/$defs/{key}")
    for i, value in enumerate(node.get("allOf", []) + node.get("oneOf", [])):
        yield from _properties(value, f"{path}/{i}")


def test_every_field_is_documented():
    """Every property has a description, or refers ($ref) to a definition that has one."""
    schema = results_schema()

    def documented(prop: dict) -> bool:
        if "description" in prop:
            return True
        ref = prop.get("$ref", "")
        return ref.startswith("#/$defs/") and "description" in schema["$defs"][ref.split("/")[-1]]

    missing = [path for path, prop in _properties(schema) if not documented(prop)]
    assert missing == []
    for name, definition in schema["$defs"].items():
        if definition.get("type") == "object" or "properties" in definition:
            assert "description" in definition, name


def test_new_fields_validate_and_are_present(validator, leaky_result, study, tmp_path):
    from privaudit.waivers import Waivers, worksheet_text

    data = json.loads(leaky_result.to_json())
    assert data["schema_version"] == SCHEMA_VERSION and data["pseudonymised"] is False and "run" in data
    assert data["run"]["cluster"] is None  # in-process: no cluster (2.1)
    hist = data["checks"]["copies"]["histogram"]
    assert len(hist["edges"]) == len(hist["synthetic"]) + 1 == len(hist["null"]) + 1
    assert sum(hist["synthetic"]) == data["checks"]["copies"]["n_synthetic"]
    assert sum(hist["null"]) == data["checks"]["copies"]["null"]["n"]
    reason = data["verdict"]["reasons"][0]
    assert reason["use"] == "value" and reason["compared"] == reason["value"] and reason["n_waivers"] == 0
    assert data["verdict"]["review"] is None and data["verdict"]["n_waivers"] == 0
    # With waivers, and pseudonymised: still valid.
    path = tmp_path / "w.toml"
    path.write_text(worksheet_text(data).replace('decision = "pending"\nreviewer = ""\ndate = ""\nreason = ""', 'decision = "accepted"\nreviewer = "R"\ndate = 2025-01-02\nreason = "ok"', 2))
    reviewed = audit(study.train, study.leaky, study.holdout, waivers=Waivers.from_toml(path), out=tmp_path / "o", no_images=True)
    assert reviewed.verdict.n_waivers == 2
    shared = json.loads((tmp_path / "o" / "results.json").read_text())
    validator.validate(shared)
    validator.validate(json.loads(reviewed.to_json()))
    # Pseudonyms are consistent across fields: the waived items are still found among the flagged.
    flagged = {(f["synthetic_id"], f["train_id"]) for f in shared["checks"]["copies"]["flagged"]}
    applied = [(w["item"]["synthetic_id"], w["item"]["train_id"]) for w in shared["verdict"]["review"]["applied"]]
    assert len(applied) == 2 and set(applied) <= flagged and all(a.startswith("img-") for a, _ in applied)
    html = (tmp_path / "o" / "report.html").read_text()
    assert html.count('class="waived"') == 2 and "R, 2025-01-02" in html


def test_a_results_file_without_the_optional_fields_still_loads(leaky_result, tmp_path):
    """Minor versions only add optional fields: a file without them validates and re-gates."""
    from privaudit.results import load_results

    data = json.loads(leaky_result.to_json())
    data["schema_version"] = "2.0.0"
    for key in ("pseudonymised",):
        data.pop(key)
    data["run"].pop("cluster")  # added in 2.1
    data["checks"]["copies"].pop("histogram")
    data["checks"]["copies"].pop("search")  # added in 2.1
    data["checks"]["quality"].pop("n_holdout_compared")  # added in 2.2
    for r in data["verdict"]["reasons"]:
        for key in ("use", "compared", "n_waivers", "value_before_review"):
            r.pop(key)
    data["verdict"].pop("n_waivers")
    data["verdict"].pop("review")
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    loaded = load_results(path)
    from privaudit.reports import render_html

    assert "privaudit report" in render_html(loaded)
