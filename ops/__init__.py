"""Operator-facing entry points: the ``tiersync`` command line and the demo."""
