"""The HTTP gateway (``subswitch gateway``): producers that are not Python enqueue
commands over HTTP, with an API key held to its producer's policy (contract §9)."""

from producers.gateway.app import GatewayParts, create_app
from producers.gateway.intake import Caller, Intake

__all__ = ["Caller", "GatewayParts", "Intake", "create_app"]
