"""Documentation that is generated from the code stays current."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_recipe_reference_is_current():
    from mcomp.recipe.reference import render_reference

    shipped = (ROOT / "docs" / "recipe-reference.md").read_text()
    assert shipped == render_reference(), (
        "regenerate: python -m mcomp.recipe.reference > docs/recipe-reference.md"
    )


def test_recipe_reference_lists_every_option_of_every_stage():
    from mcomp.compressors.registry import STAGES, stage_class
    from mcomp.recipe.reference import render_reference

    text = render_reference()
    for name in STAGES:
        assert f"## Stage `{name}`" in text
        for field in stage_class(name).Options.model_fields:
            assert f"| `{field}` |" in text, (name, field)
    # nested groups are spelled out with dotted keys
    assert "| `calibration.method` |" in text and "| `fallback.max_trials` |" in text
