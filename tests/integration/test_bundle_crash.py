"""kill -9 of `tiersync bundle export` and `tiersync bundle import` at random points: nothing lost, nothing doubled."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from tests.exchange_nodes import q
from tests.helpers import ROOT, cli, run_once
from tests.integration.test_bundle import CITY, changes, inbox, same_rows, two_nodes


def killed(args: list[str], after: float) -> int | None:
    """Run ``tiersync ARGS`` as a process and kill -9 it after ``after`` seconds; its exit code if it finished."""
    process = subprocess.Popen([sys.executable, "-m", "ops", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    time.sleep(after)
    process.kill()
    return process.wait()


def exported_through(tmp: Path) -> int:
    rows = q(tmp / "county-x.db", "SELECT position FROM tiersync_checkpoint WHERE pipeline = ?",
             (f"bundle-export:{CITY}",))
    return int(rows[0][0].partition(":")[2]) if rows else 0


def test_kill_9_during_export_and_import(tmp_path):
    county, city = two_nodes(tmp_path, volume_size=16384)
    changes(tmp_path, range(1, 40001))
    run_once(county)  # 2000 batches of 20 waiting in the outbox
    batches = q(tmp_path / "county-x.db", "SELECT count(*) FROM tiersync_outbox")[0][0]
    assert batches == 2000
    chance = random.Random(17)
    complete: list[Path] = []
    for round_ in range(8):  # exports killed at random points: a bundle is there whole, or not at all
        out = tmp_path / f"e{round_}.tsb"
        before = exported_through(tmp_path)
        killed(["bundle", "export", "--config", str(county), "--link", CITY, "--out", str(out)],
               chance.uniform(0.4, 2.2))
        if exported_through(tmp_path) > before:
            assert out.exists(), "the export was recorded without its bundle"
        if out.exists():
            complete.append(out)
    # imports killed at random points: all of a bundle is stored, or none of it
    bundle = tmp_path / "all.tsb"
    cli("bundle", "export", "--config", str(county), "--link", CITY, "--again", "--out", str(bundle))
    for _ in range(8):
        killed(["bundle", "import", "--config", str(city), str(bundle)], chance.uniform(0.3, 0.9))
        assert len(inbox(tmp_path)) in (0, batches)
    for path in [*complete, bundle]:  # every complete bundle imports (or is skipped as already here)
        cli("bundle", "import", "--config", str(city), str(path))
    assert [s for (s,) in inbox(tmp_path)] == list(range(1, batches + 1))
    run_once(city)
    same_rows(tmp_path)
    assert {s for (s,) in q(tmp_path / "city-x.db", "SELECT last_seq FROM tiersync_inbox_consumer")} == {batches}
