"""The orchestrator service: journeys, runs, timers and retries."""

from .app import OrchestratorApp

__all__ = ["OrchestratorApp"]
