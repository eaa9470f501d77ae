"""Documentation that is generated from the code stays current."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


# The README is the front door; the rest lives in docs/ (issue #13).
README_MAX_LINES = 200
# CI (.ci/run) runs these steps; the README shows them as one line to copy.
TEST_COMMAND = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
    'pip install -e ".[test,hf]" && python -m pytest'
)
LINKED_PAGES = [
    "README.md",
    "compressors/README.md",
    *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")),
]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
    """Markdown without code blocks and code spans, where `](` is not a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file: lower case, punctuation dropped, spaces
    to hyphens, `-1`, `-2`, ... for repeats."""
    seen: dict[str, int] = {}
    anchors = set()
    for title in HEADING.findall(FENCE.sub("", path.read_text())):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _relative_links(page: str) -> list[tuple[str, str]]:
    """(target path, anchor) of every relative link on `page`."""
    links = []
    for target in LINK.findall(_prose((ROOT / page).read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        links.append((path, anchor))
    return links


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it at most {README_MAX_LINES} and move the "
        "rest to docs/"
    )


def test_every_docs_page_is_linked_from_the_index():
    index = {path for path, _ in _relative_links("docs/index.md")}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"index.md"}
    assert pages - index == set(), "add these pages to docs/index.md"


@pytest.mark.parametrize("page", LINKED_PAGES)
def test_relative_links_point_to_files_and_headings_that_exist(page):
    broken = []
    for path, anchor in _relative_links(page):
        target = (ROOT / page).parent / path if path else ROOT / page
        if not target.exists():
            broken.append(f"{path} (no such file)")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{path}#{anchor} (no such heading)")
    assert broken == [], f"{page}: broken links: {broken}"


def test_link_check_sees_links():
    # guards the pattern: the README links to docs/ and to files, with and without anchors
    links = _relative_links("README.md")
    assert ("docs/index.md", "") in links and ("recipes/quickstart.yaml", "") in links
    assert any(anchor for _, anchor in _relative_links("docs/stages.md"))
    assert ("docs/x.md", "") not in _relative_links("README.md")


def test_anchor_rule_matches_github():
    # the rule the link check relies on, on headings whose anchors GitHub is known to make
    page = ROOT / "docs" / "recipe-reference.md"
    assert {"recipe-reference", "stage-prune", "stage-qat"} <= _anchors(page)


def test_readme_shows_the_test_command_that_ci_runs():
    readme = (ROOT / "README.md").read_text().splitlines()
    shown = [line.strip() for line in readme if line.strip().endswith("python -m pytest")]
    assert shown == [TEST_COMMAND], "the README's test command must stay exactly as CI runs it"
    # .ci/run runs the same steps in its own venv (.ci-venv), quietly, with ruff in between
    ci = [
        line.strip().replace(".ci-venv", ".venv").replace("--quiet ", "")
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
    ]
    positions = []
    for step in TEST_COMMAND.split(" && "):
        assert step in ci, f".ci/run does not run the README's step {step!r}"
        positions.append(ci.index(step))
    assert positions == sorted(positions), ".ci/run runs the README's steps in another order"
