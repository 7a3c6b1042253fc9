"""A local stand-in for the MasStack customers API v2, with fault injection.

Entry points: :func:`simulator.app.create_app` (the ASGI app),
:func:`simulator.server.serve` (serve it), :mod:`simulator.testing` (run one for tests),
:func:`simulator.accounts.generate_service_account`, and ``subswitch simulator``.
"""
