"""Run one pipeline: read a batch, map it, apply it with its checkpoint, then acknowledge the source.

The order is the whole of the exactly-once argument: the target commits the
rows and the checkpoint in one transaction; the source is acknowledged (its
change log purged) only after that commit; after any crash the reader starts
again from the checkpoint stored in the target.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from .apply import Batch, BatchApplier, event_to_json
from .config import Config
from .control import ReloadRound
from .errors import TerminalError, TiersyncError, TransientError
from .mapping import TargetChange
from .plan import PipelinePlan, build_plan
from .seams import DeadLetter

log = logging.getLogger(__name__)

ONCE_RETRIES = 6  # with --once, a source or target still failing after this many tries ends the run


@dataclass
class PipelineStats:
    batches: int = 0
    events: int = 0
    applied: int = 0
    dead_letters: int = 0
    echoes_skipped: int = 0
    retries: int = 0
    last_error: str = ""
    started: float = field(default_factory=time.monotonic)


class PipelineRunner:
    """Drives one pipeline until told to stop; rebuilds itself after transient failures."""

    def __init__(self, config: Config, name: str, stop: threading.Event | None = None,
                 max_backoff: float = 30.0):
        self.config = config
        self.pipeline = config.pipeline(name)
        self.stop = stop or threading.Event()
        self.max_backoff = max_backoff
        self.stats = PipelineStats()
        self.plan: PipelinePlan | None = None
        self.reader = None
        self.session = None
        self.applier: BatchApplier | None = None
        # the next batch is read and mapped while the current one is applied (the two wait on different
        # databases); at most one batch is in flight, so memory stays bounded by the batch size
        self._prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"read-{name}")
        self._next: Future | None = None
        self._open_transaction = False
        self._caught_up = True
        self._reload = threading.Event()  # set by SIGHUP: new rules take effect at the next batch boundary
        self._reload_rounds: list[ReloadRound] = []  # the requests waiting for this pipeline's answer
        self._reload_lock = threading.Lock()
        self.last_reload = ""

    # -------------------------------------------------------------- set-up

    def open(self) -> None:
        plan = build_plan(self.config, self.pipeline)
        plan.target.ensure_state()
        start = plan.target.load_checkpoint(self.pipeline.name)
        if self.pipeline.initial_load and start is None:
            # the reader will start at the beginning of the change log, which is before this copy:
            # what changes during the copy is replayed afterwards (see engine.snapshot)
            from .snapshot import Snapshot
            Snapshot(plan, chunk_rows=self.pipeline.batch_size, stop=self.stop, resume_only=True).run()
        if self.pipeline.source.capture == "inbox":
            from .network import inbox_reader

            self.reader = inbox_reader(self.config, plan, start)
        else:
            self.reader = plan.source.reader(self.pipeline.source, self.pipeline.name, plan.captured, start,
                                             plan.node_id)
        if self.pipeline.target.outbox:
            from .network import outbox_sink

            self.applier = self.session = outbox_sink(self.config, plan)
        else:
            self.session = plan.target.target_session()
            self.applier = plan.target.applier(self.session, plan)
        self.plan = plan
        self._negotiate_encoded_rows()
        log.info("pipeline %s: started from %s", self.pipeline.name, start or "the beginning of the change log")

    def _negotiate_encoded_rows(self) -> None:
        """Let rows that need no decoding travel encoded, where the reader and the target session share a format."""
        fmt = getattr(self.session, "encoded_format", None)
        self.reader.encode_rows(self.plan.encoded_tables() if fmt else set(), fmt)

    def close(self) -> None:
        if self._next is not None:
            try:
                self._next.result()
            except Exception:  # noqa: BLE001 - the batch is dropped; it is read again from the checkpoint
                pass
            self._next = None
        for part in (self.reader, self.session):
            if part is not None:
                try:
                    part.close()
                except Exception:  # noqa: BLE001 - closing a broken connection must not hide the real error
                    pass
        self.reader = self.session = self.applier = None
        self._open_transaction = False

    # -------------------------------------------------------------- one batch

    def _is_echo(self, origin: str, path: tuple[str, ...]) -> bool:
        target_node = self.pipeline.target.node
        return bool(target_node) and (origin == target_node or target_node in path)

    def _produce(self) -> Batch | None:
        """Read the next batch from the source and map it (None: nothing pending)."""
        read = self.reader.read(self.pipeline.batch_size)
        self._caught_up = read.caught_up
        if not read.events and not read.ends_transaction and not read.rejected:
            return None
        if self.plan.resources is not None:
            self.plan.resources.refresh()  # table value maps and lookups past their reload interval
        mappings = self.plan.mappings
        changes: list[TargetChange] = []
        rejected: list[DeadLetter] = list(read.rejected)
        node, tier = self.plan.node_id, self.plan.node_tier
        check_echo = bool(self.pipeline.target.node)
        for event in read.events:
            if check_echo and self._is_echo(event.origin, event.path):
                self.stats.echoes_skipped += 1
                continue
            if not event.origin_tier and event.origin == node:  # happened here: it carries this node's tier on
                event.origin_tier = tier
            mapping = mappings[event.table]
            try:
                changes.extend(mapping.map(event))
            except (ValueError, TypeError, ArithmeticError) as exc:
                rejected.append(DeadLetter(self.pipeline.name, str(event.table), str(mapping.target),
                                           event.op.value, list(event.key), f"mapping failed: {exc}",
                                           event_to_json(event), read.position))
        batch = Batch(self.pipeline.name, changes, read.position, len(read.events), rejected, more=read.more)
        if isinstance(self.applier, BatchApplier):
            self.applier.prepare(batch)  # compacted and grouped here, in the reading thread
        return batch

    def step(self) -> int | None:
        """Move one batch; returns how many source events it consumed (None: nothing pending)."""
        if self._next is not None:
            future, self._next = self._next, None
            batch = future.result()
        else:
            batch = self._produce()
        if self._reload.is_set() and not self._open_transaction:
            self._answer_reload()  # a batch in hand was mapped with the old rules; the next one uses the new
        if batch is None:
            return None
        self._next = self._prefetcher.submit(self._produce)
        if batch.more or self._open_transaction:
            result = self._apply_part(batch)
            if batch.more:
                self._count(batch, result)
                return batch.events
        else:
            result = self.applier.apply(batch)
        self.reader.acknowledge(batch.position)
        self._count(batch, result)
        return batch.events

    def _apply_part(self, batch: Batch):
        """A source transaction larger than a batch: its parts share one target transaction."""
        session = self.session
        try:
            if not self._open_transaction:
                session.begin()
                session.lock_pipeline(batch.pipeline)
                self._open_transaction = True
            result = self.applier.apply_open(batch)
            if not batch.more:
                session.save_checkpoint(batch.pipeline, batch.position, batch.events)
                session.commit()
                self._open_transaction = False
            return result
        except BaseException:
            self._open_transaction = False
            session.rollback()
            raise

    def _count(self, batch: Batch, result) -> None:
        self.stats.batches += 1
        self.stats.events += batch.events
        self.stats.applied += result.applied
        self.stats.dead_letters += result.dead_letters

    # -------------------------------------------------------------- rule reload

    def request_reload(self, round_: ReloadRound | None = None) -> None:
        """Ask for the rules to be re-read from the config file at the next batch boundary; the answer goes to
        ``round_`` (a `tiersync reload` request) when given."""
        with self._reload_lock:
            if round_ is not None:
                self._reload_rounds.append(round_)
            self._reload.set()

    def _answer_reload(self) -> None:
        with self._reload_lock:
            self._reload.clear()
            rounds, self._reload_rounds = self._reload_rounds, []
        asked_by = "; ".join(dict.fromkeys(f"asked by {r.request.get('by')} at {r.request.get('at')}"
                                           for r in rounds)) or "asked by SIGHUP"
        lines = self.reload_rules(asked_by)
        for round_ in rounds:
            round_.answer(self.pipeline.name, lines)

    def reload_rules(self, asked_by: str = "") -> list[str]:
        """Recompile this pipeline's mappings from the config file; keep the old ones on any problem.

        Only the rules (mappings, value maps, mask key) change; sources, targets and tables need a restart.
        Returns what it logged: which mappings changed, so existing target rows need a re-load.
        """
        from .config import load_config
        from .plan import compile_mappings
        from .schema import dependency_order

        file = self.config.source_file
        who = _who_changed(file) + (f"; {asked_by}" if asked_by else "")
        try:
            config = load_config(file)
            pipeline = config.pipeline(self.pipeline.name)
            problems: list[str] = []
            mappings, targets, resources = compile_mappings(config, pipeline, self.plan.source, self.plan.target,
                                                            self.plan.captured, problems)
        except TiersyncError as exc:
            problems = getattr(exc, "problems", None) or [str(exc)]
        if problems:
            message = f"pipeline {self.pipeline.name}: rules NOT reloaded from {file} ({who}): " + "; ".join(problems)
            log.error(message)
            self.last_reload = message
            return [message]
        changed = reload_report(self.pipeline, pipeline)
        self.plan.mappings, self.plan.resources = mappings, resources
        self.plan.target_tables.update(targets)
        self.applier.tables = self.plan.target_tables
        self.applier.order = dependency_order(self.plan.target_tables)
        self.applier.conflicts = self.plan.conflict_rules()
        self._negotiate_encoded_rows()  # batches read before this are decoded by the new rules where needed
        self.pipeline = self.plan.config = pipeline
        self.config = config
        lines = [f"pipeline {pipeline.name}: rules reloaded from {file} ({who}); "
                 f"{len(changed) or 'no'} mapping(s) changed"]
        lines += [f"pipeline {pipeline.name}: {what}" for what in changed]
        for line in lines:
            log.log(logging.WARNING if changed else logging.INFO, line)
        self.last_reload = "\n".join(lines)
        return lines

    # -------------------------------------------------------------- the loop

    def run(self, once: bool = False) -> None:
        """Run until ``stop`` is set (or, with ``once``, until nothing is pending). Terminal errors propagate."""
        try:
            self._loop(once)
        except TransientError:
            raise
        except Exception as exc:
            self.stats.last_error = str(exc)
            raise
        finally:
            self.close()
            self._prefetcher.shutdown(wait=True)

    def _loop(self, once: bool) -> None:
        failures = 0
        while not self.stop.is_set():
            try:
                if self.plan is None:
                    self.open()
                moved = self.step()
                failures = 0
                if moved is None:
                    if once and self._caught_up:
                        return
                    self.stop.wait(self.pipeline.poll_interval)
            except TransientError as exc:
                failures += 1
                if once and failures >= ONCE_RETRIES:
                    raise TerminalError(f"gave up after {failures} attempts: {exc}") from None
                self.stats.retries += 1
                self.stats.last_error = str(exc)
                delay = min(self.max_backoff, 0.5 * 2 ** min(failures, 10))
                log.warning("pipeline %s: %s — retrying in %.1fs from the last checkpoint",
                            self.pipeline.name, exc, delay)
                self.close()
                self.plan = None
                self.stop.wait(delay)


def _who_changed(file: str) -> str:
    """The config file's owner and modification time: who changed the rules, as far as the file tells."""
    import os
    import pwd
    from datetime import datetime, timezone
    try:
        stat = os.stat(file)
    except OSError:
        return "file not readable"
    try:
        owner = pwd.getpwuid(stat.st_uid).pw_name
    except KeyError:
        owner = str(stat.st_uid)
    when = datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(timespec="seconds")
    return f"owner {owner}, modified {when}"


def reload_report(old, new) -> list[str]:
    """Per source table whose rules differ: what changed and whether rows already in the target are stale."""
    report = []
    tables = dict.fromkeys(list(old.source.tables) + list(new.source.tables))
    for table in tables:
        before = [m.model_dump() for m in old.mappings_for(table)]
        after = [m.model_dump() for m in new.mappings_for(table)]
        maps_changed = old.value_maps != new.value_maps or old.mask_key != new.mask_key
        if before == after and not maps_changed:
            continue
        if before == after:
            report.append(f"{table}: value maps or mask key changed; existing target rows may need a re-load "
                          f"(tiersync snapshot --pipeline {new.name} --table {table})")
        elif [_without(m, "filter") for m in before] == [_without(m, "filter") for m in after]:
            report.append(f"{table}: the row filter changed; rows it now admits or excludes are only corrected "
                          f"by a re-load (tiersync snapshot --pipeline {new.name} --table {table})")
        else:
            report.append(f"{table}: mapping rules changed; existing target rows were written with the old rules "
                          f"and need a re-load (tiersync snapshot --pipeline {new.name} --table {table})")
    return report


def _without(dump: dict, key: str) -> dict:
    return {k: v for k, v in dump.items() if k != key}
