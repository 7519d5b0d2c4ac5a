"""What the reconcile tests share: running `tiersync reconcile --json`, its keys, and the no-false-drift check."""

from __future__ import annotations

import json
import threading

from tests.helpers import cli, pg_exec, pg_rows, run_once


def reconcile(config, *extra, expect=None):
    result = cli("reconcile", "--config", str(config), "--pipeline", "p", "--json", "--fence-timeout", "5", *extra,
                 expect=expect)
    return json.loads(result.output) if result.output.lstrip().startswith("{") else result


def keys(report, kind):
    return sorted(k[1][0] for k in report["keys"][kind])


def assert_no_false_drift_while_writing(config, target: str, write) -> None:
    """Pipeline ``p`` runs and ``write(stop)`` writes to the source while reconcile runs three times: no missing or
    extra rows, at most the one drift planted in the target (row 2); afterwards a drift planted in the last row is
    found with the comparison fenced and nothing in flight."""
    from engine.config import load_config
    from engine.node import run_node

    stop = threading.Event()
    runner = threading.Thread(target=run_node, args=(load_config(config), ["p"]), kwargs={"stop": stop, "once": False})
    runner.start()
    writer = threading.Thread(target=write, args=(stop,))
    writer.start()
    try:
        pg_exec(target, "UPDATE item_copy SET amount = -1 WHERE id = 2")  # one real drift during the workload
        for _ in range(3):
            report = reconcile(config, "--fence-timeout", "30", expect=None)
            assert isinstance(report, dict), report.output
            assert report["missing"] == 0 and report["extra"] == 0, report
            assert keys(report, "different") in ([2], []), report  # [] only if the workload rewrote row 2
    finally:
        stop.set()
        writer.join()
        runner.join()
    run_once(config)
    [(survivor,)] = pg_rows(target, "SELECT max(id) FROM item_copy")
    pg_exec(target, f"UPDATE item_copy SET amount = -1 WHERE id = {survivor}")
    report = reconcile(config, expect=1)
    assert keys(report, "different") in ([survivor], [2, survivor]), report
    assert report["in_flight"] == 0 and report["tables"][0]["fenced"]
