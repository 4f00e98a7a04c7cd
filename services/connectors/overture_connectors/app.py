"""The connectors service application."""

from __future__ import annotations

from pathlib import Path

import grpc

from overture.connectors.v1 import connector_service_pb2, connector_service_pb2_grpc
from overture_runtime import BaseApp

from .deliveries import DeliveryService
from .email import SmtpConnector
from .plugin import Connector
from .servicer import ConnectorServicer

__all__ = ["ConnectorsApp"]


class ConnectorsApp(BaseApp):
    """``overture serve connectors``."""

    name = "connectors"
    service_names = (connector_service_pb2.DESCRIPTOR.services_by_name["ConnectorService"].full_name,)
    migrations = Path(__file__).parent / "migrations"

    def connectors(self) -> dict[str, Connector]:
        """The configured connectors, by name."""
        s = self.settings
        smtp = SmtpConnector(
            host=s.smtp_host, port=s.smtp_port, sender=s.smtp_from, username=s.smtp_username,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
            starttls=s.smtp_starttls, timeout=s.smtp_timeout_seconds, pool_size=s.smtp_pool_size,
            pool_idle_seconds=s.smtp_pool_idle_seconds, pool_max_messages=s.smtp_pool_max_messages,
        )
        return {smtp.name: smtp}

    async def on_start(self) -> None:
        connectors = self.connectors()
        defaults = {c.channel: c.name for c in connectors.values()}
        self.deliveries = DeliveryService(self.db, connectors, defaults, self.clock, self.ids,
                                          concurrency=self.settings.connector_concurrency)

    async def on_stop(self) -> None:
        await self.deliveries.close()

    def register(self, server: grpc.aio.Server) -> None:
        connector_service_pb2_grpc.add_ConnectorServiceServicer_to_server(ConnectorServicer(deliveries=self.deliveries), server)
