"""``python -m subswitch``: the CLI."""

from subswitch.cli import main

main()
