"""``tiersync trace`` (where a change went across the exchange network), `inbox accept-sequence` and `outbox resend`."""

from __future__ import annotations

import json

import click

from ops.cliutil import config_option, fail, guard, load_node


def _store(config_path: str):
    from engine.network import exchange_store

    config = load_node(config_path)
    if config.exchange is None:
        fail(f"{config_path}: the node has no exchange section", 2)
    return config, guard(lambda: exchange_store(config))


@click.command()
@config_option
@click.option("--batch", "batch_id", help="a batch id, <sender>:<receiver>:<sequence>")
@click.option("--table", help="with --key: the exchange table")
@click.option("--key", "key_json", help='with --table: the key as JSON, e.g. 42 or [42, "a"]')
@click.option("--json", "as_json", is_flag=True)
def trace(config_path: str, batch_id: str | None, table: str | None, key_json: str | None, as_json: bool) -> None:
    """Every hop of a batch (or of the batches that carried a key): node, time and status.

    Statuses: queued (in the outbox), sent (the next node has it), received, applied (in that node's
    business database), forwarded (queued onward, as the batch named in detail). Hops further away
    come back with the link senders' acknowledgements.
    """
    if not batch_id and not (table and key_json):
        fail("name a batch (--batch) or a key (--table and --key)", 2)
    config, store = _store(config_path)
    try:
        if batch_id:
            ids = [batch_id]
        else:
            try:
                key = json.loads(key_json)
            except json.JSONDecodeError:
                key = key_json
            ids = guard(lambda: store.batches_with_key(table, key if isinstance(key, list) else [key]))
            if not ids:
                fail(f"no batch that this node queued carried {table} key {key_json}")
        rows = guard(lambda: store.trace(ids))
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in rows], ensure_ascii=False, indent=1))
        return
    if not rows:
        fail(f"nothing known about {', '.join(ids)}")
    for row in rows:
        click.echo(f"{row.at}  {row.node:<20} {row.status:<10} {row.batch_id}  {row.detail}")


@click.group()
def inbox() -> None:
    """What this node received over its links."""


@inbox.command("accept-sequence")
@config_option
@click.option("--sender", required=True, help="the link (node id) whose batches are to be taken up again")
@click.option("--from", "first", type=int, required=True, help="the first sequence number to take")
def accept_sequence(config_path: str, sender: str, first: int) -> None:
    """Take SENDER's batches again from sequence FROM on, after its outbox was restored from an old backup.

    Such a sender numbers new batches from an old sequence, which this node would drop as repeats. Stop both
    nodes, run this here, then `tiersync outbox resend --link <this node> --from FROM` on the sender.
    """
    from engine.resequence import accept_sequence as accept

    reset = guard(lambda: accept(load_node(config_path), sender, first))
    where = ", ".join(reset.pipelines + (["the kafka receiving end"] if reset.kafka_receiver else []))
    click.echo(f"{sender}: the next batch taken is {first} ({where or 'no inbox pipeline'}); "
               f"{reset.dropped} received batch(es) from {first} on dropped, to be sent again")


@click.group()
def outbox() -> None:
    """What this node queued for its links."""


@outbox.command("resend")
@config_option
@click.option("--link", "link_name", required=True, help="the link (receiving node id)")
@click.option("--from", "first", type=int, required=True, help="the first sequence number to send again")
def resend(config_path: str, link_name: str, first: int) -> None:
    """Send the link's outbox batches from sequence FROM on again (with the node stopped).

    The receiver's `tiersync inbox accept-sequence` comes first; batches it already has are ignored there.
    """
    from engine.resequence import resend_from

    count = guard(lambda: resend_from(load_node(config_path), link_name, first))
    if count == 0:
        fail(f"{link_name}: no outbox batch from {first} on (acknowledged batches are kept "
             f"exchange.retention.outbox_days)")
    click.echo(f"{link_name}: {count} batch(es) from {first} on will be sent again")
