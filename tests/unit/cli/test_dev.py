"""Unit tests of what ``overture dev`` keeps in ``.overture/dev.json``: the
token it reuses across restarts, and the file's atomic replacement."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from overture_cli import dev
from overture_cli.dev import dev_token, write_dev_file


def test_the_environment_token_wins(tmp_path: Path) -> None:
    """OVERTURE_DEV_TOKEN, when set, is the token, whatever dev.json holds."""
    (tmp_path / "dev.json").write_text(json.dumps({"token": "ovt_dev_kept"}))
    assert dev_token({"OVERTURE_DEV_TOKEN": "ovt_dev_given"}, tmp_path / "dev.json") == "ovt_dev_given"


def test_the_last_token_is_kept(tmp_path: Path) -> None:
    """Without OVERTURE_DEV_TOKEN the token saved by the last run is used again."""
    (tmp_path / "dev.json").write_text(json.dumps({"token": "ovt_dev_kept", "addresses": {}}))
    assert dev_token({}, tmp_path / "dev.json") == "ovt_dev_kept"


@pytest.mark.parametrize("content", [None, "", "{not json", "[]", '{"token": ""}', '{"token": 42}'])
def test_a_new_token_when_none_can_be_kept(tmp_path: Path, content: str | None) -> None:
    """With no usable saved token (no file, an empty or broken one, no token in it) a new random one is made."""
    if content is not None:
        (tmp_path / "dev.json").write_text(content)
    first, second = dev_token({}, tmp_path / "dev.json"), dev_token({}, tmp_path / "dev.json")
    assert first.startswith("ovt_dev_") and len(first) > 30
    assert first != second


def test_the_file_is_written_whole_and_private(tmp_path: Path) -> None:
    """dev.json holds the JSON given, is readable by its owner only, and leaves no temporary file behind."""
    path = tmp_path / "dev.json"
    write_dev_file(path, {"token": "t", "addresses": {"rules": "127.0.0.1:1"}})
    assert json.loads(path.read_text()) == {"token": "t", "addresses": {"rules": "127.0.0.1:1"}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["dev.json"]


def test_a_reader_sees_the_old_file_until_the_new_one_is_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the new content is being written, dev.json still holds the old content; then it is replaced in one step."""
    path = tmp_path / "dev.json"
    path.write_text('{"token": "old"}')
    seen: list[str] = []
    real_replace = os.replace

    def replace(src: str, dst: Path) -> None:
        seen.append(path.read_text())  # the moment before the rename: the old file, whole
        seen.append(Path(src).read_text())  # the new content, complete, beside it
        real_replace(src, dst)

    monkeypatch.setattr(dev.os, "replace", replace)
    write_dev_file(path, {"token": "new"})
    assert json.loads(seen[0]) == {"token": "old"}
    assert json.loads(seen[1]) == {"token": "new"}
    assert json.loads(path.read_text()) == {"token": "new"}


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If writing fails part way, dev.json keeps its old content and the temporary file is removed."""
    path = tmp_path / "dev.json"
    path.write_text('{"token": "old"}')

    def broken_dump(data: object, out: object, **kwargs: object) -> None:
        out.write('{"tok')  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(dev.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        write_dev_file(path, {"token": "new"})
    assert path.read_text() == '{"token": "old"}'
    assert [p.name for p in tmp_path.iterdir()] == ["dev.json"]


def test_dev_configures_email_in_app_and_web_push_with_a_kept_vapid_key(tmp_path: Path) -> None:
    """The dev providers (email, in-app, web push) pass the connectors service's start-up check, and the VAPID key
    saved by the last run is used again (a new one only when none is kept), so browsers stay subscribed."""
    from overture_connectors.registry import configure
    from overture_runtime.config import Settings

    key = dev.dev_vapid_key(tmp_path / "dev.json")
    (tmp_path / "dev.json").write_text(json.dumps({"token": "t", "vapid_private_key": key}))
    assert dev.dev_vapid_key(tmp_path / "dev.json") == key != dev.dev_vapid_key(tmp_path / "missing.json")
    settings = Settings(database_url="sqlite+aiosqlite:///unused.db", redis_url="redis://127.0.0.1:1/0",  # type: ignore[call-arg]
                        connector_providers=dev.dev_providers(key))
    providers, routes = configure(settings)
    assert [(p.config.name, p.config.kind) for p in providers] == [("smtp", "smtp"), ("in-app", "in_app"), ("web-push", "web_push")]
    assert len(routes) == 3
