"""Unit tests of :mod:`overture_connectors.registry`: plugins found through
entry points, providers and routes checked at start-up with clear errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from overture.common.v1 import messaging_pb2
from overture_connectors.email import SmtpConnector
from overture_connectors.plugin import ConnectorContext
from overture_connectors.registry import ProviderConfigError, build, configure, discover
from overture_runtime.clock import IdGenerator, ManualClock
from overture_runtime.config import Settings
from overture_runtime.redis import Keys

S = messaging_pb2


def settings(**overrides: object) -> Settings:
    """Settings with no database or Redis needed."""
    return Settings(database_url="sqlite+aiosqlite:///unused.db", redis_url="redis://127.0.0.1:1/0", **overrides)  # type: ignore[arg-type]


def context(s: Settings) -> ConnectorContext:
    """A context with what plugins that keep no state need."""
    return ConnectorContext(settings=s, clock=ManualClock(), ids=IdGenerator(), keys=Keys("t"))


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed third-party distribution (a dist-info on sys.path) declaring an ``overture.connectors`` entry point."""
    (tmp_path / "acme_pigeon.py").write_text(textwrap.dedent('''
        import pydantic
        from overture.common.v1 import messaging_pb2
        from overture_connectors.plugin import SendResult

        class PigeonSettings(pydantic.BaseModel, extra="forbid"):
            loft: str

        class PigeonConnector:
            channel = messaging_pb2.CHANNEL_SMS
            def __init__(self, name, rate, loft):
                self.name, self.rate_limit_per_second, self.loft = name, rate, loft
            async def send(self, message):
                return SendResult(provider_message_id="coo-" + message.idempotency_key)
            async def status(self, provider_message_id):
                return None
            async def close(self):
                pass

        class Plugin:
            channel = messaging_pb2.CHANNEL_SMS
            settings_model = PigeonSettings
            def create(self, provider, settings, context):
                return PigeonConnector(provider.name, provider.rate_limit_per_second, settings.loft)
    '''))
    info = tmp_path / "acme_pigeon-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-pigeon\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[overture.connectors]\npigeon = acme_pigeon:Plugin\nbroken = acme_missing:Plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_the_built_in_smtp_plugin_is_found_through_its_entry_point() -> None:
    """The ``overture.connectors`` group lists Overture's own SMTP plugin, registered in pyproject.toml."""
    assert discover()["smtp"].value == "overture_connectors.email:SmtpPlugin"


def test_without_providers_one_smtp_provider_is_built_from_the_smtp_settings() -> None:
    """With no OVERTURE_CONNECTOR_PROVIDERS the service has one SMTP provider named smtp, the email route's only entry."""
    s = settings(smtp_host="mail.internal", smtp_port=2525)
    providers, routes = configure(s)
    assert [p.config.name for p in providers] == ["smtp"]
    assert routes == {S.CHANNEL_EMAIL: ("smtp",)}
    (connector,) = build(providers, context(s)).values()
    assert isinstance(connector, SmtpConnector)
    assert connector.pool.address == ("mail.internal", 2525)


def test_a_third_party_plugin_adds_a_channel_without_any_change_to_overture(third_party: Path) -> None:
    """A distribution that declares an entry point in the group provides a kind that providers can name, on its own channel."""
    s = settings(connector_providers='[{"name": "birds", "kind": "pigeon", "rate_limit_per_second": 3, "settings": {"loft": "north"}}]')
    providers, routes = configure(s)
    connectors = build(providers, context(s))
    assert routes == {S.CHANNEL_SMS: ("birds",)}
    assert connectors["birds"].channel == S.CHANNEL_SMS
    assert connectors["birds"].rate_limit_per_second == 3


def test_several_providers_per_channel_follow_the_configured_route() -> None:
    """Two SMTP providers with their own settings serve email in the order the route gives."""
    s = settings(
        connector_providers='[{"name": "primary", "kind": "smtp", "settings": {"host": "a.example", "port": 25}},'
                            ' {"name": "backup", "kind": "smtp", "settings": {"host": "b.example", "from": "B <b@example.com>"}}]',
        connector_routes='{"email": ["backup", "primary"]}',
    )
    providers, routes = configure(s)
    connectors = build(providers, context(s))
    assert routes == {S.CHANNEL_EMAIL: ("backup", "primary")}
    assert {name: c.pool.address[0] for name, c in connectors.items()} == {"primary": "a.example", "backup": "b.example"}  # type: ignore[attr-defined]


def test_every_configuration_problem_is_reported_at_once_at_its_place(third_party: Path) -> None:
    """Unknown kinds, a plugin that fails to import, bad plugin settings, duplicate names and bad routes are all listed, each with its place."""
    s = settings(
        connector_providers='[{"name": "a", "kind": "smtp", "settings": {"port": 0, "hots": "x"}},'
                            ' {"name": "a", "kind": "smtp"},'
                            ' {"name": "b", "kind": "carrier_pigeon"},'
                            ' {"name": "c", "kind": "broken"},'
                            ' {"name": "d", "kind": "pigeon", "settings": {}}]',
        connector_routes='{"emial": ["a"], "email": ["a", "zz"], "sms": ["a"]}',
    )
    with pytest.raises(ProviderConfigError) as raised:
        configure(s)
    problems = "\n".join(raised.value.problems)
    for expected in (
        "OVERTURE_CONNECTOR_PROVIDERS[0] (a).settings.port: Input should be greater than or equal to 1",
        "OVERTURE_CONNECTOR_PROVIDERS[0] (a).settings.hots: Extra inputs are not permitted",
        "OVERTURE_CONNECTOR_PROVIDERS[1] (a).name: another provider is already named 'a'",
        "OVERTURE_CONNECTOR_PROVIDERS[2] (b).kind: no plugin 'carrier_pigeon'",
        "OVERTURE_CONNECTOR_PROVIDERS[3] (c).kind: the plugin 'broken' (acme_missing:Plugin) failed to load: ModuleNotFoundError",
        "OVERTURE_CONNECTOR_PROVIDERS[4] (d).settings.loft: Field required",
        "OVERTURE_CONNECTOR_ROUTES.emial: unknown channel 'emial'",
        "OVERTURE_CONNECTOR_ROUTES.email: no provider named 'zz'",
    ):
        assert expected in problems


def test_provider_fields_are_checked_when_the_settings_are_read() -> None:
    """A provider name that is not an identifier, a negative rate limit or an unknown field fails when the settings load."""
    for bad in ('[{"name": "Bad Name", "kind": "smtp"}]', '[{"name": "a", "kind": "smtp", "rate_limit_per_second": -1}]',
                '[{"name": "a", "kind": "smtp", "retries": 3}]', '[{"name": "a", "kind": "smtp"'):
        with pytest.raises(ValueError, match="connector_providers"):
            settings(connector_providers=bad)


def test_a_route_to_a_provider_of_another_channel_is_refused(third_party: Path) -> None:
    """Routing email through an SMS provider is a configuration error naming both channels."""
    s = settings(connector_providers='[{"name": "birds", "kind": "pigeon", "settings": {"loft": "x"}}]', connector_routes='{"email": ["birds"]}')
    with pytest.raises(ProviderConfigError, match="provider 'birds' serves sms, not email"):
        configure(s)
