"""Audit configuration: TOML, unknown keys with suggestions, type checks."""

from __future__ import annotations

import pytest

from privaudit.checks.copies import CopiesOptions
from privaudit.config import AuditConfig
from privaudit.data.metadata import DEFAULT_PLACEHOLDERS
from privaudit.errors import ConfigError


def test_defaults_and_round_trip(tmp_path):
    cfg = AuditConfig()
    assert cfg.to_dict() == {
        "seed": 0,
        "embedders": ["pixels"],
        "checks": ["copies", "metadata", "quality"],
        "max_skipped": 0.05,
        "batch_size": 256,
        "device": "cpu",
        "check_options": {
            "copies": {
                "fdr": 0.05, "method": "fdr", "alpha": 0.01, "score": "ratio", "near_duplicate_similarity": None,
                "embedders": None, "unaligned_embedders": ["copydetect"], "positive_control": 48, "control_prevalence": 0.05, "bootstrap": 200, "explain": 200,
                "index": "auto", "approximate_from": 50_000, "agreement_sample": 2000, "align": True, "align_max": 20_000,
                "aligned_weight": 2 / 3,
            },
            "metadata": {"placeholders": list(DEFAULT_PLACEHOLDERS)},
            "quality": {
                "embedder": None, "k": 5, "kid_subsets": 100, "kid_subset_size": 1000,
                "fid_groups": 20, "max_compared": 20000, "cas_classifier": "linear", "cas_bootstrap": 1000,
            },
        },
        "embedder_options": {  # without the inputs' sizes: every embedder the checks may use
            "copydetect": {
                "max_images": 5000, "epochs": 40.0, "min_steps": 200, "max_steps": 800, "batch_size": 128,
                "temperature": 0.1, "learning_rate": 0.003, "width": 16, "size": 32, "crop_min": 0.7,
            }
        },
    }
    # The copies check adds copydetect only where a set is too large for its aligned comparison.
    small, large = {"train": 100, "synthetic": 100, "holdout": 100}, {"train": 100, "synthetic": 20_001, "holdout": 100}
    assert cfg.spaces_needed(small) == ("pixels",) and cfg.to_dict(small)["embedder_options"] == {}
    assert cfg.spaces_needed(large) == ("pixels", "copydetect") and list(cfg.to_dict(large)["embedder_options"]) == ["copydetect"]
    assert cfg.spaces_needed({"train": 20_001, "synthetic": 100}) == ("pixels", "copydetect")  # the null: training, without a holdout
    assert AuditConfig.from_dict({"copies": {"align": False}}).spaces_needed(large) == ("pixels",)  # the user's choice
    assert AuditConfig.from_dict({"copies": {"unaligned_embedders": []}}).spaces_needed(large) == ("pixels",)
    assert AuditConfig.from_dict({"copies": {"embedders": ["pixels"]}}).spaces_needed(large) == ("pixels",)
    path = tmp_path / "c.toml"
    path.write_text(
        'seed = 4\nchecks = ["copies"]\nembedders = ["pixels"]\n[copies]\nalpha = 0.05\nnear_duplicate_similarity = 1\n'
        'embedders = ["pixels"]\n[embedder_options.copydetect]\nmax_steps = 300\n'
    )
    cfg = AuditConfig.from_toml(path)
    assert cfg.seed == 4 and cfg.embedders == ("pixels",)
    assert cfg.options_for("copies") == CopiesOptions(alpha=0.05, near_duplicate_similarity=1.0, embedders=("pixels",))
    assert cfg.embedder_options_for("copydetect").max_steps == 300
    # Options of embedders the audit does not use are not recorded.
    assert cfg.to_dict()["embedder_options"] == {}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"sed": 1}, "unknown key 'sed' \\(did you mean 'seed'\\?\\)"),
        ({"seed": "1"}, "seed: expected int; got text '1'"),
        ({"seed": True}, "seed: expected int; got boolean"),
        ({"checks": "copies"}, "checks: expected a list"),
        ({"checks": ["copis"]}, "unknown check 'copis' \\(did you mean 'copies'\\?\\)"),
        ({"checks": []}, "no checks selected"),
        ({"checks": ["copies", "copies"]}, "listed twice"),
        ({"embedders": ["pixel"]}, "unknown embedder 'pixel' \\(did you mean 'pixels'\\?\\)"),
        ({"max_skipped": 2}, "max_skipped must lie in \\[0, 1\\]"),
        ({"copies": {"alpah": 0.1}}, "unknown key 'alpah' \\(did you mean 'alpha'\\?\\)"),
        ({"copies": {"alpha": 1.5}}, "copies.alpha must lie in \\(0, 1\\)"),
        ({"copies": {"alpha": "x"}}, "alpha: expected float; got text"),
        ({"copies": 3}, "expected a table"),
        ({"copies": {"score": "ratios"}}, "did you mean 'ratio'"),
        ({"copies": {"fdr": 0}}, "copies.fdr must lie in \\(0, 1\\)"),
        ({"copies": {"align_max": 0}}, "copies.align_max must be >= 1"),
        ({"copies": {"align": "yes"}}, "align: expected bool"),
        ({"copies": {"aligned_weight": 0}}, "copies.aligned_weight must lie in \\(0, 1\\]"),
        ({"embedder_options": {"copydetect": {"widht": 8}}}, "unknown key 'widht' \\(did you mean 'width'\\?\\)"),
        ({"embedder_options": {"pixels": {"size": 8}}}, "embedder 'pixels' takes no options"),
    ],
    ids=["typo", "str-int", "bool-int", "not-list", "check-typo", "no-checks", "dup-check", "embedder-typo", "range", "option-typo", "option-range", "option-type", "not-table", "literal", "fdr", "align-max", "align-type", "aligned-weight", "embedder-option-typo", "no-options"],
)
def test_bad_configs(data, message):
    with pytest.raises(ConfigError, match=message):
        AuditConfig.from_dict(data)


def test_bad_toml_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("seed = \n")
    with pytest.raises(ConfigError, match="config file .* is not valid TOML"):
        AuditConfig.from_toml(path)
