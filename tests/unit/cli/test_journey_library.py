"""The journey library (examples/journeys): every file passes `overture
journeys validate` without a warning, and its README lists each one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from overture.orchestrator.v1 import journey_pb2
from overture_cli.main import main
from overture_cli.specfile import read_spec
from overture_orchestrator.definition import compile_journey

LIBRARY = Path(__file__).resolve().parents[3] / "examples" / "journeys"
FILES = sorted(LIBRARY.glob("*.yaml"))


def test_the_library_has_the_eight_journeys_issue_9_asks_for() -> None:
    """The folder holds at least the eight journeys of the issue."""
    assert {p.stem for p in FILES} >= {"welcome-series", "abandoned-cart", "win-back", "renewal-reminder", "double-opt-in", "vip-offer",
                                       "ab-subject-test", "review-request"}


@pytest.mark.parametrize("file", FILES, ids=lambda p: p.stem)
def test_each_journey_passes_validate_without_a_warning(file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`overture journeys validate FILE` accepts the file, it is named after its file, describes itself, and compiles without a warning."""
    assert main(["journeys", "validate", str(file)]) == 0
    assert "valid" in capsys.readouterr().out
    spec = read_spec(file, journey_pb2.JourneySpec)
    compiled, _ = compile_journey(spec.message)
    assert spec.name == file.stem and spec.message.description and compiled is not None and not compiled.warnings
    assert file.read_text().startswith("# ")  # the header comment: what it does and how to try it


def test_the_readme_links_every_journey() -> None:
    """examples/journeys/README.md links each file of the folder, and only those."""
    linked = set(re.findall(r"\]\(([\w-]+\.yaml)\)", (LIBRARY / "README.md").read_text()))
    assert linked == {p.name for p in FILES}
