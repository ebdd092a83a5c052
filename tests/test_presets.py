"""One preset registry: a preset is a model config and its recipe, registered once (edgederm.presets)."""
from __future__ import annotations

import json
from dataclasses import fields

import pytest
from typer.testing import CliRunner

from edgederm.cli import app
from edgederm.errors import ConfigError
from edgederm.models.config import ModelConfig
from edgederm.presets import get_preset, paper_row, preset_names, register_preset
from edgederm.training.recipe import EDGE_RECIPE, FINE_TUNE_SWA_RECIPE, PAPER_RECIPE, TINY_RECIPE

PAPER_ROWS = ("paper", "sff-cat", "aff-cat", "aff-bab", "aff-aab")


def _changed(recipe, base) -> set[str]:
    return {f.name for f in fields(base) if getattr(recipe, f.name) != getattr(base, f.name)}


def test_every_preset_names_its_recipe():
    """No fallback: each recipe is a shared one, or a replace of one that changes only the loss and its source."""
    loss = {"loss_weight_clinical", "loss_weight_image", "loss_weight_metadata", "source"}
    for name in preset_names():
        recipe = get_preset(name).recipe
        base = min((PAPER_RECIPE, TINY_RECIPE, EDGE_RECIPE, FINE_TUNE_SWA_RECIPE), key=lambda b: len(_changed(recipe, b)))
        assert _changed(recipe, base) <= loss, name
    for row in (*PAPER_ROWS, "clinical-only-paper"):
        assert get_preset(row).recipe is PAPER_RECIPE
    assert get_preset("tiny").recipe is TINY_RECIPE and get_preset("edge").recipe is EDGE_RECIPE
    assert get_preset("ssn-tiny").recipe.loss_weight_clinical == 0.5
    assert _changed(get_preset("jif-mmfa-tiny").recipe, TINY_RECIPE) == {"loss_weight_image", "loss_weight_metadata",
                                                                         "source"}


def test_registry_refuses_a_second_registration_and_unknown_names():
    with pytest.raises(ConfigError, match="'tiny' is already registered"):
        register_preset("tiny", ModelConfig(), PAPER_RECIPE)
    with pytest.raises(ConfigError, match=r"unknown preset 'huge' \(choose from paper, "):
        get_preset("huge")


def test_paper_rows_carry_the_papers_counts():
    assert paper_row(get_preset("aff-aab").model).name == "paper"     # the same network, the first registered
    assert paper_row(get_preset("sff-cat").model).paper_params_m == 58.49
    assert paper_row(get_preset("edge").model) is None


def test_model_summary_list_prints_every_preset_with_its_recipe():
    result = CliRunner().invoke(app, ["model", "summary", "--list"])
    assert result.exit_code == 0, result.output
    for name in preset_names():
        assert any(line.startswith(name + " ") for line in result.output.splitlines()), name
        assert f"recipe: {get_preset(name).recipe.source}" in result.output
    rows = json.loads(CliRunner().invoke(app, ["model", "summary", "--list", "--json"]).output)
    assert [r["preset"] for r in rows] == list(preset_names())
    assert rows[-1] == {**rows[-1], "preset": "tiny", "epochs": 16, "recipe": TINY_RECIPE.source}
