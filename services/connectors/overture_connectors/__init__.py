"""The connectors service: exactly-once delivery through channel connectors."""

from .app import ConnectorsApp

__all__ = ["ConnectorsApp"]
