"""The README and docs/architecture.md point only at what a clone has: every
link resolves inside the repository, and every test the architecture names
as a guarantee's proof exists. (Kept here, beside the CLI's tests, because
the README's tour and these documents are maintained with the CLI.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOCS = [ROOT / "README.md", ROOT / "docs" / "architecture.md"]


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:|#", t)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_link_resolves_inside_the_repository(doc: Path) -> None:
    """Each relative link of the document names a file or folder of this repository."""
    for target in _links(doc):
        resolved = (doc.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{doc.name} links {target}, outside the repository"
        assert resolved.exists(), f"{doc.name} links {target}, which does not exist"


def test_the_readme_names_nothing_outside_the_repository() -> None:
    """The README refers to no path above the repository (such as ../shared/DESIGN.md) and links the architecture."""
    text = (ROOT / "README.md").read_text()
    assert "../" not in text
    assert "](docs/architecture.md)" in text


def test_the_tests_the_architecture_names_exist() -> None:
    """Every test file and test function docs/architecture.md cites as proof of a guarantee exists."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    cited = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", text)
    assert len(cited) > 10
    for file, name in cited:
        assert (ROOT / file).exists(), f"{file} does not exist"
        if name:
            assert re.search(rf"^(async )?def {name}\(", (ROOT / file).read_text(), re.M), f"{file} has no {name}"
