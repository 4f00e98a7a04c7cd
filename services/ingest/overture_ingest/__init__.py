"""The ingest service: where events enter Overture, durably."""

from .app import IngestApp

__all__ = ["IngestApp"]
