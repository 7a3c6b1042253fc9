"""``subswitch`` commands of the producers side."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this side's commands to the ``subswitch`` CLI."""
