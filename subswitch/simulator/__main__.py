"""``python -m subswitch.simulator``: the same as ``subswitch simulator``."""

from __future__ import annotations

import typer

from subswitch.simulator.cli import register

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
register(app)

if __name__ == "__main__":
    app()
