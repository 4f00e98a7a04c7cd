"""Connector plugins, found through the ``overture.connectors`` entry-point
group, and the providers configured on them.

Discovery asks :mod:`importlib.metadata` for the group's entry points: each
entry point's name is a provider *kind* and its object a
:class:`~.plugin.ConnectorPlugin`. Overture registers its own plugins the
same way (``pyproject.toml``), so a third party's distribution that declares
``[project.entry-points."overture.connectors"] my_sms = "pkg:Plugin"`` adds
a channel without any change here.

The providers come from ``OVERTURE_CONNECTOR_PROVIDERS`` and the routes from
``OVERTURE_CONNECTOR_ROUTES``. Everything is checked at start-up, and every
problem is reported at once, each at its place
(``OVERTURE_CONNECTOR_PROVIDERS[1] (sms-backup).settings.url: ...``), so a
mistake stops the service before it serves rather than failing sends later.
Plugins are loaded only for the kinds the configuration names, so a broken
third-party plugin that nobody configured cannot stop the service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pydantic

from overture.common.v1 import messaging_pb2
from overture_runtime.config import ProviderConfig, Settings

from .plugin import Connector, ConnectorContext, ConnectorPlugin

__all__ = ["GROUP", "Provider", "ProviderConfigError", "build", "channel_name", "configure", "discover", "providers_of"]

GROUP = "overture.connectors"
"""The entry-point group connector plugins register in."""
_PROVIDERS = "OVERTURE_CONNECTOR_PROVIDERS"
_ROUTES = "OVERTURE_CONNECTOR_ROUTES"


class ProviderConfigError(ValueError):
    """The provider configuration is wrong; the message lists every problem, one per line."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("the connector configuration is invalid:\n  " + "\n  ".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True)
class Provider:
    """A provider checked against its plugin, ready to build."""

    config: ProviderConfig
    """The provider as configured."""
    plugin: ConnectorPlugin
    """The plugin of its kind."""
    settings: pydantic.BaseModel
    """Its settings, validated by the plugin's model."""

    @property
    def channel(self) -> messaging_pb2.Channel.ValueType:
        """The channel it serves."""
        return self.plugin.channel


def channel_name(channel: messaging_pb2.Channel.ValueType) -> str:
    """The short name of *channel* (``email``, ``in_app``), as routes name it."""
    return messaging_pb2.Channel.Name(channel).removeprefix("CHANNEL_").lower()


def discover(group: str = GROUP) -> dict[str, EntryPoint]:
    """The entry points of *group*, by kind. Nothing is imported yet."""
    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=group):
        # The same distribution seen twice on sys.path lists its entry points
        # twice; only a different target under one name is a conflict.
        if point.name in found and found[point.name].value != point.value:
            raise ProviderConfigError([f"two plugins claim the kind {point.name!r}: {found[point.name].value} and {point.value}"])
        found[point.name] = point
    return found


def providers_of(settings: Settings) -> tuple[ProviderConfig, ...]:
    """The configured providers; without any, one SMTP provider named ``smtp`` (``OVERTURE_SMTP_*``)."""
    return settings.connector_providers or (ProviderConfig(name="smtp", kind="smtp"),)


def configure(settings: Settings, *, plugins: Mapping[str, EntryPoint] | None = None) -> tuple[list[Provider], dict[messaging_pb2.Channel.ValueType, tuple[str, ...]]]:
    """Check the providers and routes of *settings* against the plugins.

    Returns the providers, in configuration order, and the route of each
    channel that has a provider (channel number to provider names, in the
    order to try them). Raises :class:`ProviderConfigError` listing every problem.
    """
    points = discover() if plugins is None else plugins
    problems: list[str] = []
    providers: list[Provider] = []
    loaded: dict[str, ConnectorPlugin | None] = {}
    seen: set[str] = set()
    for index, config in enumerate(providers_of(settings)):
        where = f"{_PROVIDERS}[{index}] ({config.name})"
        if config.name in seen:
            problems.append(f"{where}.name: another provider is already named {config.name!r}")
            continue
        seen.add(config.name)
        if config.kind not in loaded:
            loaded[config.kind] = _load(config.kind, points, problems, where)
        plugin = loaded[config.kind]
        if plugin is None:
            continue
        try:
            checked = plugin.settings_model.model_validate(config.settings)
        except pydantic.ValidationError as error:
            for item in error.errors():
                path = ".".join(str(part) for part in item["loc"])
                problems.append(f"{where}.settings{'.' + path if path else ''}: {item['msg']}")
            continue
        providers.append(Provider(config=config, plugin=plugin, settings=checked))
    routes = _routes(settings.connector_routes, providers, problems)
    if problems:
        raise ProviderConfigError(problems)
    return providers, routes


def build(providers: Sequence[Provider], context: ConnectorContext) -> dict[str, Connector]:
    """The connector of each provider, by name."""
    connectors: dict[str, Connector] = {}
    for provider in providers:
        connector = provider.plugin.create(provider.config, provider.settings, context)
        if connector.name != provider.config.name or connector.channel != provider.channel:
            raise ProviderConfigError([f"plugin {provider.config.kind!r} built a connector named {connector.name!r} on another "
                                       f"channel or name than its provider {provider.config.name!r}"])
        connectors[provider.config.name] = connector
    return connectors


def _load(kind: str, points: Mapping[str, EntryPoint], problems: list[str], where: str) -> ConnectorPlugin | None:
    point = points.get(kind)
    if point is None:
        known = ", ".join(sorted(points)) or "none"
        problems.append(f"{where}.kind: no plugin {kind!r} in the entry-point group {GROUP!r} (installed: {known})")
        return None
    try:
        plugin: Any = point.load()
    except Exception as error:  # noqa: BLE001 - a third party's import error is reported as configuration
        problems.append(f"{where}.kind: the plugin {kind!r} ({point.value}) failed to load: {type(error).__name__}: {error}")
        return None
    if isinstance(plugin, type):
        plugin = plugin()
    missing = [name for name in ("channel", "settings_model", "create") if not hasattr(plugin, name)]
    if missing or plugin.channel not in messaging_pb2.Channel.values() or plugin.channel == messaging_pb2.CHANNEL_UNSPECIFIED:
        problems.append(f"{where}.kind: {point.value} is not a connector plugin (it needs channel, settings_model and create)")
        return None
    return plugin  # type: ignore[no-any-return]


def _routes(configured: Mapping[str, Sequence[str]], providers: Sequence[Provider], problems: list[str]) -> dict[messaging_pb2.Channel.ValueType, tuple[str, ...]]:
    by_name = {p.config.name: p for p in providers}
    routes: dict[messaging_pb2.Channel.ValueType, tuple[str, ...]] = {}
    for provider in providers:
        routes.setdefault(provider.channel, ())
        routes[provider.channel] += (provider.config.name,)
    channels = {channel_name(value): value for value in messaging_pb2.Channel.values() if value != messaging_pb2.CHANNEL_UNSPECIFIED}
    for name, route in configured.items():
        where = f"{_ROUTES}.{name}"
        channel = channels.get(name)
        if channel is None:
            problems.append(f"{where}: unknown channel {name!r}; expected one of {', '.join(sorted(channels))}")
            continue
        if not route:
            problems.append(f"{where}: a route needs at least one provider")
            continue
        if len(set(route)) != len(route):
            problems.append(f"{where}: a provider appears twice in the route")
        for provider_name in route:
            found = by_name.get(provider_name)
            if found is None:
                problems.append(f"{where}: no provider named {provider_name!r}")
            elif found.channel != channel:
                problems.append(f"{where}: provider {provider_name!r} serves {channel_name(found.channel)}, not {name}")
        routes[channel] = tuple(route)
    return routes
