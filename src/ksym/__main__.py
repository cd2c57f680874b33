"""``python -m ksym`` runs the command line."""

from .cli import run

run()
