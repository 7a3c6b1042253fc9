"""Alembic's entry point: migrate on the connection the archive hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from subswitch.archive.schema import VERSION_TABLE


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        version_table=VERSION_TABLE,
        # SQLite alters a table by copying it; later revisions get that for free.
        render_as_batch=connection.dialect.name == "sqlite",
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


# Alembic runs this file under a name of its own; imported as a package module (a tool
# walking the source) it must do nothing.
if __name__ != "subswitch.archive.migrations.env":
    _run(context.config.attributes["connection"])
