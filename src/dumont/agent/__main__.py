"""``python -m dumont.agent`` runs the agent from a checkout (hosts run the shipped zip instead)."""

import sys

from .entry import main

main(sys.argv)
