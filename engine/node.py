"""Run a node's pipelines side by side until stopped; report their progress."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from datetime import datetime, timezone

from .config import Config
from .errors import TiersyncError
from .pipeline import PipelineRunner
from .registry import connector_for

log = logging.getLogger(__name__)


def run_node(config: Config, names: list[str], *, once: bool, stop: threading.Event,
             network: bool = True) -> dict[str, str]:
    """Run ``names`` (one thread each); returns the pipelines that failed with their errors.

    With ``network`` and an exchange section, the node also relays (the forward pipeline) and sends over its
    links (after the pipelines, with ``once``).
    """
    failures: dict[str, str] = {}
    receivers: list = []
    senders: list = []
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

    _reload_on_sighup(runners)
    pipelines = [threading.Thread(target=drive, args=(r,), name=r.pipeline.name, daemon=True) for r in runners]
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
        tables = [source.qualify(t) for t in pipeline.source.tables]
        progress = source.progress(pipeline.source, name, tables, checkpoint)
        lag = 0.0
        if progress.oldest_pending is not None:
            lag = max(0.0, (datetime.now(timezone.utc) - progress.oldest_pending).total_seconds())
        return PipelineStatus(name, progress.head, checkpoint or "-", progress.pending, lag,
                              target.dead_letter_count(name), warning=progress.warning)
    except TiersyncError as exc:
        return PipelineStatus(name, "?", "?", -1, -1.0, -1, str(exc))


def _reload_on_sighup(runners: list[PipelineRunner]) -> None:
    """SIGHUP: every pipeline re-reads its rules at its next batch boundary (main thread, POSIX only)."""
    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return

    def on_hangup(_signum, _frame):
        log.info("SIGHUP: reloading rules at the next batch boundary")
        for runner in runners:
            runner.request_reload()
    signal.signal(signal.SIGHUP, on_hangup)
