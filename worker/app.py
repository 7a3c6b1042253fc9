"""The worker's Celery app: ``celery -A worker.app worker`` runs it.

Importing this module is an entry point: it reads the settings from the
environment (``SUBSWITCH_*``) once. ``subswitch worker`` is the friendlier way in.
"""

from __future__ import annotations

from subswitch.settings import Settings
from worker.factory import create_app

app = create_app(Settings())
