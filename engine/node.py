"""Run a node's pipelines side by side until stopped; report their progress."""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone

from .config import Config
from .control import ReloadRound, RunFiles
from .errors import TiersyncError
from .exchange import Backlog
from .pipeline import PipelineRunner
from .registry import connector_for

log = logging.getLogger(__name__)


SWITCH_INTERVAL = 0.001  # seconds a thread may hold the GIL while another wants it (Python's default: 0.005)
GC_YOUNG_THRESHOLD = 50_000  # container allocations between young collections (Python's default: 700)


def tune_garbage_collector() -> None:
    """Make the cyclic garbage collector cheap for an engine process (call once, after start-up).

    Every change allocates a few short-lived objects that never form cycles (events, row dicts, tuples);
    with the default thresholds the collector runs every ~100 changes and keeps rescanning the batch in
    flight, which costs as much as decoding it. Objects alive now (modules, configuration) are moved out of
    its sight, and young collections run every 50,000 allocations. Reference counting still frees all
    acyclic garbage at once, so memory stays bounded by the batch in flight.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def run_node(config: Config, names: list[str], *, once: bool, stop: threading.Event,
             network: bool = True) -> dict[str, str]:
    """Run ``names`` (one thread each); returns the pipelines that failed with their errors.

    With ``network`` and an exchange section, the node also relays (the forward pipeline) and sends over its
    links (after the pipelines, with ``once``).
    """
    failures: dict[str, str] = {}
    receivers: list = []
    senders: list = []
    # each pipeline reads (CPU-bound) in one thread while another waits on its target; at Python's default
    # 5 ms switch interval every answer from the target waits that long for the reading thread to let go
    sys.setswitchinterval(SWITCH_INTERVAL)
    if network and config.exchange is not None:
        from .network import FORWARD, exchange_workers, prepare, with_relay

        prepare(config)
        config = with_relay(config)
        if any(p.name == FORWARD for p in config.pipelines) and FORWARD not in names:
            names = [*names, FORWARD]
        receivers, senders = exchange_workers(config, stop, once)
    runners = [PipelineRunner(config, name, stop) for name in names]

    def drive(runner: PipelineRunner) -> None:
        try:
            runner.run(once=once)
        except TiersyncError as exc:
            failures[runner.pipeline.name] = str(exc)
            log.error("pipeline %s stopped: %s", runner.pipeline.name, exc)
        except Exception as exc:  # noqa: BLE001 - a bug must stop this pipeline loudly, not the others
            failures[runner.pipeline.name] = f"{type(exc).__name__}: {exc}"
            log.exception("pipeline %s stopped by an unexpected error", runner.pipeline.name)

    def work(name: str, action) -> None:
        try:
            action()
        except TiersyncError as exc:
            failures[name] = str(exc)
            log.error("%s stopped: %s", name, exc)
        except Exception as exc:  # noqa: BLE001 - as for pipelines
            failures[name] = f"{type(exc).__name__}: {exc}"
            log.exception("%s stopped by an unexpected error", name)

    def in_threads(threads: list[threading.Thread]) -> None:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)

    def workers(pairs: list) -> list[threading.Thread]:
        return [threading.Thread(target=work, args=(n, a), name=n, daemon=True) for n, a in pairs]

    pipelines = [threading.Thread(target=drive, args=(r,), name=r.pipeline.name, daemon=True) for r in runners]
    files = RunFiles(config, [r.pipeline.name for r in runners])
    files.reachable = _reload_on_sighup(runners, pipelines, files, failures)  # the handler before the pid file
    with files:
        if once:  # take in what arrived, apply and relay it, then send what was queued
            for stage in (workers(receivers), pipelines, workers(senders)):
                in_threads(stage)
        else:
            in_threads(workers(receivers) + pipelines + workers(senders))
    return failures


@dataclass
class PipelineStatus:
    name: str
    source_position: str
    applied_position: str
    pending: int
    lag_seconds: float
    dead_letters: int
    error: str = ""
    warning: str = ""


def pipeline_status(config: Config, name: str) -> PipelineStatus:
    """Where a pipeline stands, read from its source and target without changing either."""
    pipeline = config.pipeline(name)
    source_db = config.databases[pipeline.source.database]
    target_db = config.databases[pipeline.target.database]
    try:
        source = connector_for(source_db.url, source_db.state_schema)
        target = connector_for(target_db.url, target_db.state_schema)
        checkpoint = target.load_checkpoint(name)
        if pipeline.source.capture == "inbox":  # its source is the inbox, not a change log
            head, pending, lag = _inbox_progress(source, name)
            return PipelineStatus(name, head, checkpoint or "-", pending, lag, target.dead_letter_count(name))
        tables = [source.qualify(t) for t in pipeline.source.tables]
        progress = source.progress(pipeline.source, name, tables, checkpoint)
        lag = 0.0
        if progress.oldest_pending is not None:
            lag = max(0.0, (datetime.now(timezone.utc) - progress.oldest_pending).total_seconds())
        return PipelineStatus(name, progress.head, checkpoint or "-", progress.pending, lag,
                              target.dead_letter_count(name), warning=progress.warning)
    except TiersyncError as exc:
        return PipelineStatus(name, "?", "?", -1, -1.0, -1, str(exc))


def _inbox_progress(source, consumer: str) -> tuple[str, int, float]:
    """(head, changes waiting, seconds the oldest waited) of an inbox pipeline: what it has not applied yet."""
    store = source.exchange_store()
    try:
        store.ensure()
        waiting = store.inbox_backlog([consumer])
    finally:
        store.close()
    batches = sum(b.batches for b in waiting)
    return (f"inbox: {batches} batches waiting", sum(b.changes for b in waiting),
            max((b.age_seconds() for b in waiting), default=0.0))


@dataclass
class LinkBacklog:
    """One end of a link in ``tiersync status``: ``side`` is outbox (batches not yet acknowledged by the receiver
    ``peer``) or inbox (batches received from ``peer`` and not yet applied by ``consumer``)."""

    side: str
    peer: str
    batches: int
    changes: int
    oldest: str | None
    age_seconds: float
    consumer: str = ""
    last_seq: int = 0  # outbox: the last sequence number queued; inbox: the last the consumer applied
    warning: str = ""


@dataclass
class ExchangeStatus:
    backlogs: list[LinkBacklog]
    error: str = ""


def exchange_status(config: Config) -> ExchangeStatus | None:
    """The backlog of every link's outbox (each configured link, even when empty) and of the inbox per sender
    and consumer (only where something waits), with a warning where ``exchange.backlog_warning`` is passed."""
    if config.exchange is None:
        return None
    from .network import exchange_store, inbox_consumers

    warn = config.exchange.backlog_warning
    now = datetime.now(timezone.utc)
    try:
        store = exchange_store(config)
        try:
            store.ensure()
            outbox = {b.peer: b for b in store.outbox_backlog()}
            inbox = store.inbox_backlog(inbox_consumers(config))
        finally:
            store.close()
    except TiersyncError as exc:
        return ExchangeStatus([], str(exc))
    rows = []
    for side, backlog in [("outbox", outbox.get(link) or Backlog(link, 0, 0, None))
                          for link in sorted(set(config.exchange.links) | set(outbox))] + \
            [("inbox", b) for b in inbox]:
        age = backlog.age_seconds(now)
        problems = []
        if warn.batches is not None and backlog.batches >= warn.batches:
            problems.append(f"{backlog.batches} batches waiting (warning at {warn.batches})")
        if warn.age is not None and age >= warn.age:
            problems.append(f"the oldest has waited {age:.0f} s (warning at {warn.age:.0f} s)")
        rows.append(LinkBacklog(side, backlog.peer, backlog.batches, backlog.changes, backlog.oldest, age,
                                backlog.consumer, backlog.last_seq, "; ".join(problems)))
    return ExchangeStatus(rows)


def _reload_on_sighup(runners: list[PipelineRunner], threads: list[threading.Thread], files: RunFiles,
                      failures: dict[str, str]) -> bool:
    """SIGHUP (sent by `tiersync reload`, or by hand): every pipeline re-reads its rules at its next batch boundary
    and answers into the process's answer file. Whether the handler is installed (main thread, POSIX only)."""
    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return False

    def on_hangup(_signum, _frame):
        for request, answer_file in files.take_requests():
            log.info("reload of the rules requested by %s at %s: at each pipeline's next batch boundary",
                     request.get("by"), request.get("at"))
            round_ = ReloadRound(request, [r.pipeline.name for r in runners], answer_file)
            for runner, thread in zip(runners, threads):
                if thread.is_alive() or not thread.ident:
                    runner.request_reload(round_)
                else:
                    name = runner.pipeline.name
                    round_.answer(name, [f"pipeline {name} is not running: {failures.get(name, 'it has finished')}"])
            if not runners:
                round_.answer("-", ["this process runs no pipelines"])
    signal.signal(signal.SIGHUP, on_hangup)
    return True
