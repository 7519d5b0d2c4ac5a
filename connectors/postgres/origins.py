"""How a change tiersync applied to PostgreSQL names the node it came from, for log-based capture there.

Contract (PostgreSQL 14 and later):

- An apply session uses **one replication origin per applying pipeline**, ``tiersync:<pipeline>``, so a
  node fed by thousands of others holds one entry of ``max_replication_slots`` per pipeline, not one per
  origin node. PostgreSQL's own tools see the rows as replicated (``origin = none`` subscriptions skip them).
- Before each run of rows of one origin node the session writes a *transactional* logical decoding
  message, prefix :data:`MESSAGE_PREFIX`, content the node id (empty: the node that owns the database).
  It commits or rolls back with the rows (also inside savepoints), and pgoutput sends it in place, between
  the rows, when the stream is started with ``messages 'true'``.
- The logical reader attributes each row to the node of the last such message before it in its
  transaction; a row with none before it belongs to the origin of the transaction's Origin message:
  nothing for a pipeline origin (the captured node itself), the node for a per-node origin
  ``tiersync:<pipeline>:<node>`` that earlier versions wrote (so WAL written before an upgrade still
  decodes exactly), the origin's own name for one tiersync did not make.

PostgreSQL lets one session at a time hold an origin: a second session of the pipeline (a snapshot beside
the stream) applies without it, its messages attributing its rows all the same. Servers older than 14
cannot send messages, and a user may lack EXECUTE on ``pg_logical_emit_message``: there the session keeps
the per-node origins.
Per-node origins left from earlier versions are dropped by the session once every logical slot of the
cluster has confirmed past their last transaction (:func:`legacy_prefix`), so upgrading frees them.
"""

from __future__ import annotations

ORIGIN_PREFIX = "tiersync:"
MESSAGE_PREFIX = "tiersync.origin"
MESSAGES_SINCE = 140000  # server_version_num from which pgoutput sends logical decoding messages


def origin_name(pipeline: str) -> str:
    """The replication origin of an applying pipeline."""
    return f"{ORIGIN_PREFIX}{pipeline}"


def per_node_origin_name(pipeline: str, node: str) -> str:
    """The replication origin of ``pipeline`` applying ``node``'s changes (servers without messages)."""
    return f"{ORIGIN_PREFIX}{pipeline}:{node}"


def legacy_prefix(pipeline: str) -> str:
    """What every per-node origin of ``pipeline`` starts with (pipeline names hold no ``:``)."""
    return f"{ORIGIN_PREFIX}{pipeline}:"


def node_of_origin(name: str) -> str:
    """The node a transaction replayed under replication origin ``name`` came from; "" when its messages tell."""
    if not name.startswith(ORIGIN_PREFIX):
        return name
    return name[len(ORIGIN_PREFIX):].partition(":")[2]


def node_of_message(transactional: bool, prefix: str, content: bytes) -> str | None:
    """The node the rows after this logical decoding message came from ("" the captured node), or None
    when the message is not tiersync's."""
    if not transactional or prefix != MESSAGE_PREFIX:
        return None
    return content.decode("utf-8", errors="replace")
