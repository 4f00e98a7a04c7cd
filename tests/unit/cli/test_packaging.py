"""How the ``overture`` distribution (and its CLI) installs: pyproject.toml's
metadata as setuptools reads it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def test_license_is_an_spdx_expression() -> None:
    """`project.license` is an SPDX expression string, the form setuptools 77+ asks for, not the deprecated table."""
    license_ = tomllib.loads(PYPROJECT.read_text())["project"]["license"]
    assert license_ == "Apache-2.0"


def test_setuptools_reads_the_metadata_without_a_warning() -> None:
    """setuptools applies pyproject.toml with no deprecation warning (warnings are errors here), so installs print no banner."""
    pytest.importorskip("setuptools")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    dist = apply_configuration(Distribution(), str(PYPROJECT))
    assert dist.metadata.license_expression == "Apache-2.0"
