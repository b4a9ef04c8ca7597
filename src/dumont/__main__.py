"""``python -m dumont`` runs the CLI."""

from dumont.cli import main

main()
