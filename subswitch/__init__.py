"""subswitch: switch telecom subscriptions' barrings and services on and off, reliably.

This package holds what producers and workers share besides the message contract
(settings, broker topology, the embedded broker) and the ``subswitch`` CLI.
"""

__version__ = "0.1.0"
