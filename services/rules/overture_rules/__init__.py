"""The rules service: versioned, auditable rule sets and the send decision."""

from .app import RulesApp

__all__ = ["RulesApp"]
