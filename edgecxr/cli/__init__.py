"""The command line: parses arguments and prints; the work is in the three layers below it."""

from edgecxr.cli.main import app, main

__all__ = ["app", "main"]
