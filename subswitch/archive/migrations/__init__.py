"""Alembic migrations of the archive's schema, run by the archive itself when it starts
(:func:`subswitch.archive.store.migrate`); revisions are written by hand in ``versions/``."""
