"""Unit tests of :mod:`overture_cli.cmd_rules`: backtest window edges."""

from __future__ import annotations

import datetime as dt

import pytest

from overture_cli.cmd_rules import parse_when
from overture_cli.output import CliError

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - dt.timedelta(minutes=30)),
        ("1h", NOW - dt.timedelta(hours=1)),
        ("2d", NOW - dt.timedelta(days=2)),
        ("1w", NOW - dt.timedelta(weeks=1)),
        ("90s", NOW - dt.timedelta(seconds=90)),
        ("1.5h", NOW - dt.timedelta(minutes=90)),
        ("2026-11-01T00:00:00Z", dt.datetime(2026, 11, 1, tzinfo=dt.UTC)),
        ("2026-11-01T02:00:00+02:00", dt.datetime(2026, 11, 1, tzinfo=dt.UTC)),
        ("2026-11-01", dt.datetime(2026, 11, 1, tzinfo=dt.UTC)),
    ],
)
def test_window_edges_are_times_ago_or_rfc3339(text: str, expected: dt.datetime) -> None:
    """A window edge is a time ago (30m, 1h, 2d, 1w) or an RFC 3339 time (UTC when it names no offset)."""
    assert parse_when(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "1y", "-1h", "h", ""])
def test_other_window_edges_are_refused(text: str) -> None:
    """Anything else is refused with a message showing both accepted forms."""
    with pytest.raises(CliError, match=r"30m, 1h, 2d, 1w.*RFC 3339"):
        parse_when(text, now=NOW)
