"""``tiersync reload``: make a running node re-read its rules at each pipeline's next batch boundary."""

from __future__ import annotations

import sys

import click

from ops.cliutil import config_option, fail, guard, load_node, operator_name


@click.command()
@config_option
@click.option("--timeout", type=click.FloatRange(0.1), default=60.0, show_default=True,
              help="seconds to wait for every pipeline's answer (each answers at its next batch boundary)")
def reload(config_path: str, timeout: float) -> None:
    """Make the running node reload its rules (mappings, value maps, mask key) and print what each pipeline
    answered: whether the rules were taken, which mappings changed, and which tables need a re-load.

    The node is found by the pid files its `tiersync run` processes keep in node.state_dir; the request (who,
    when) is logged by the node. Exit code 0: every pipeline reloaded; 1: no node runs, a pipeline refused the
    new rules (it keeps the old ones) or did not answer in time; 2: the file itself has errors.
    """
    from engine.control import ask_reload, running_processes, state_dir, wait_for_answer

    config = load_node(config_path)
    processes = guard(lambda: running_processes(config))
    if not processes:
        fail(f"no running node {config.node.id} found: no live process in {state_dir(config)} "
             f"(start it with: tiersync run --config {config_path})")
    by = operator_name()
    asked = [(process, guard(lambda p=process: ask_reload(p, by))) for process in processes]
    trouble = False
    for process, request_id in asked:
        click.echo(f"node {config.node.id}, process {process.pid} (running since {process.since}):")
        answer = wait_for_answer(process, request_id, timeout)
        if answer is None:
            click.secho(f"  no answer within {timeout:g}s (the process ended, or no pipeline reached a batch "
                        f"boundary)", fg="red")
            trouble = True
            continue
        for lines in answer["answers"].values():
            for line in lines:
                refused = "NOT reloaded" in line or "is not running" in line
                trouble |= refused
                click.secho(f"  {line}", fg="red" if refused else None)
        for name in answer["waiting"]:
            click.secho(f"  pipeline {name}: no answer within {timeout:g}s (still inside a batch, or reconnecting); "
                        f"it reloads at its next batch boundary", fg="yellow")
            trouble = True
    sys.exit(1 if trouble else 0)
