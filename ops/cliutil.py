"""What every command module of the ``tiersync`` CLI shares: loading the config, options, errors."""

from __future__ import annotations

import getpass
import socket
import sys

import click

from engine.config import Config, load_config
from engine.errors import ConfigError, TiersyncError


def fail(message: str, code: int = 1) -> None:
    click.secho(message, fg="red", err=True)
    sys.exit(code)


def load_node(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        click.secho(f"{len(exc.problems)} problem(s) in the configuration:", fg="red", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)


def operator_name() -> str:
    """Who runs this command, as user@host (recorded with what the command did)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def guard(action):
    """Run ``action`` and turn tiersync errors into a message and an exit code."""
    try:
        return action()
    except ConfigError as exc:
        click.secho(f"{len(exc.problems)} problem(s):", fg="red", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)
    except TiersyncError as exc:
        fail(str(exc))


config_option = click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
                             help="the node's YAML file")
pipeline_option = click.option("--pipeline", "pipeline_name", required=True, help="pipeline name")
