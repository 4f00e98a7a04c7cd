"""The journey templates the builder starts from.

The source is a folder of journey YAML files, the same files
``overture journeys publish`` takes (``OVERTURE_CONSOLE_JOURNEY_TEMPLATES``,
``examples`` by default): every ``*.yaml`` in it and in its ``journeys/``
subfolder whose top level has a ``trigger`` is a template, read with the
CLI's spec reader, so the builder and the CLI read a file the same way.
Files that do not read are left out (and logged). The folder is read on
each use: templates can be added without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog
import yaml

from overture.orchestrator.v1 import journey_pb2
from overture_cli.specfile import SpecFileError, read_spec

__all__ = ["JourneyLibrary", "JourneyTemplate"]

log = structlog.get_logger("overture.console")


@dataclass(frozen=True)
class JourneyTemplate:
    """One template."""

    key: str
    """How the builder names it: the file's path in the folder, without ``.yaml``."""
    name: str
    """The journey name the file gives."""
    spec: journey_pb2.JourneySpec
    """The definition."""


class JourneyLibrary:
    """The templates of one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted([*self.folder.glob("*.yaml"), *self.folder.glob("journeys/*.yaml")])

    def templates(self) -> list[JourneyTemplate]:
        """Every readable journey template, by key."""
        found = []
        for path in self._files():
            template = self._read(path)
            if template is not None:
                found.append(template)
        return found

    def get(self, key: str) -> JourneyTemplate | None:
        """The template named *key*, or None."""
        return next((t for t in self.templates() if t.key == key), None)

    def _read(self, path: Path) -> JourneyTemplate | None:
        try:
            top = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            return None
        if not isinstance(top, dict) or "trigger" not in top:
            return None  # a rule set, or something else
        try:
            spec = read_spec(path, journey_pb2.JourneySpec)
        except SpecFileError as error:
            log.warning("console.template_unreadable", file=str(path), problems=len(error.problems))
            return None
        key = str(path.relative_to(self.folder).with_suffix(""))
        return JourneyTemplate(key=key, name=spec.name, spec=spec.message)
