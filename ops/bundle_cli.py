"""``tiersync bundle``: offline bundles between nodes (export, import, receipts, keys)."""

from __future__ import annotations

import importlib
from pathlib import Path

import click

from ops.cliutil import config_option, fail, guard, load_node


def _module(name: str):
    """``engine.offline`` or ``engine.bundle``; without the cryptography package, a message saying what to install."""
    return guard(lambda: importlib.import_module(name))


def _node_and_store(config_path: str):
    from engine.network import exchange_store

    config = load_node(config_path)
    if config.exchange is None:
        fail(f"{config_path}: the node has no exchange section", 2)
    store = guard(lambda: exchange_store(config))
    guard(store.ensure)
    return config, store


@click.group()
def bundle() -> None:
    """Offline bundles: a link's batches as signed, encrypted volume files, carried by hand, FTP or a directory."""


@bundle.command("export")
@config_option
@click.option("--link", "link_name", required=True, help="the link (a node id) whose batches to export")
@click.option("--out", type=click.Path(dir_okay=False), help="the bundle's manifest file; volumes are FILE.001, … "
              "(default: a new file in the link's directory)")
@click.option("--from", "from_seq", type=click.IntRange(min=1), help="export from this sequence on (delivered or not)")
@click.option("--again", is_flag=True, help="export every batch not yet delivered (a bundle was lost)")
def export_cmd(config_path: str, link_name: str, out: str | None, from_seq: int | None, again: bool) -> None:
    """Write the link's batches after the last export as one bundle, and remember how far it went.

    Exported batches stay in the outbox, undelivered, until the receiver's receipt is taken with
    `tiersync bundle ack`. Exit 0 also when there was nothing to export (no file is written).
    """
    export_link = _module("engine.offline").export_link
    if from_seq is not None and again:
        fail("--from and --again exclude each other", 2)
    config, store = _node_and_store(config_path)
    try:
        report = guard(lambda: export_link(config, store, link_name, Path(out) if out else None, from_seq, again))
    finally:
        store.close()
    if report is None:
        click.echo(f"nothing to export for link {link_name}")
        return
    click.echo(report.describe())


@bundle.command("import")
@config_option
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--receipt", "receipt_path", type=click.Path(dir_okay=False),
              help="write the signed receipt for the sender here")
def import_cmd(config_path: str, file: str, receipt_path: str | None) -> None:
    """Verify a bundle and store its batches in the inbox, all or nothing; report what was stored and skipped.

    Refused (exit 1, nothing stored): a bad signature, a damaged, truncated or missing volume, a wrong
    key, a bundle for another node or from a node without a bundle link, a gap in the sequence.
    """
    offline = _module("engine.offline")
    import_bundle, write_receipt = offline.import_bundle, offline.write_receipt
    config, store = _node_and_store(config_path)
    try:
        report = guard(lambda: import_bundle(config, store, Path(file)))
    finally:
        store.close()
    click.echo(report.describe())
    if receipt_path:
        guard(lambda: write_receipt(config, report, Path(receipt_path)))
        click.echo(f"receipt for {report.manifest.sender} written to {receipt_path}")


@bundle.command("ack")
@config_option
@click.argument("file", type=click.Path(dir_okay=False))
def ack_cmd(config_path: str, file: str) -> None:
    """Take a receiver's receipt: the batches it has count as delivered."""
    accept_receipt = _module("engine.offline").accept_receipt
    config, store = _node_and_store(config_path)
    try:
        link, through, marked = guard(lambda: accept_receipt(config, store, Path(file)))
    finally:
        store.close()
    click.echo(f"{link} has the batches through {through}: {marked} newly marked delivered")


@bundle.command("keygen")
@click.option("--out", "prefix", required=True, help="writes PREFIX.key (private, mode 0600) and PREFIX.pub")
@click.option("--secret", "secret_path", type=click.Path(dir_okay=False),
              help="also write a new random link secret (hex, mode 0600) to this file")
@click.option("--cipher", type=click.Choice(["aes-256-gcm", "sm4-gcm"]), default="aes-256-gcm",
              help="the cipher the secret is for")
def keygen_cmd(prefix: str, secret_path: str | None, cipher: str) -> None:
    """Make a node's Ed25519 key pair for a link (and, once per link, the shared secret); prints no key."""
    bundle_format = _module("engine.bundle")
    generate_key_pair, generate_secret = bundle_format.generate_key_pair, bundle_format.generate_secret
    private, public = guard(lambda: generate_key_pair(prefix))
    click.echo(f"private key {private} (keep it on this node: signing_key), public key {public} "
               f"(give it to the other node: peer_public_key)")
    if secret_path:
        try:
            generate_secret(secret_path, cipher)
        except FileExistsError:
            fail(f"{secret_path} exists; not overwriting a key")
        click.echo(f"{cipher} secret {secret_path} (both nodes: bundle_key_file, or its text in bundle_key)")
