"""The worker's Celery app: ``celery -A worker.app worker`` runs it.

Importing this module is an entry point: it reads the settings from the
environment (``SUBSWITCH_*``) once, and ends the process with one line when they
cannot make a worker (e.g. a broker URL without a store URL). ``subswitch worker``
is the friendlier way in.
"""

from __future__ import annotations

from subswitch.settings import Settings
from subswitch.tracing import configure_tracing
from worker.bootstrap import create_app, start_or_refuse

_settings = start_or_refuse(Settings)
start_or_refuse(lambda: configure_tracing(_settings))
app = start_or_refuse(lambda: create_app(_settings))
