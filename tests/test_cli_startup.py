"""The ``syncd`` command starts without importing what only some commands use: admins and
scripts (a Nagios check running ``syncd status``) start it often, and so do the tests. The
syncing machinery, Alembic and the calendar and MIME parsers are imported by the commands
that use them, never by ``import syncd.cli``. No database, no timing: which modules load."""

from __future__ import annotations

import json
import subprocess
import sys

# imported by a command that syncs, audits, checks or migrates, never at start-up
DEFERRED = {
    "alembic",  # syncd.crm.database: only to check or migrate the schema
    "mako",
    "icalendar",  # calendars: read by a sync
    "recurring_ical_events",
    "prometheus_client",  # syncd audit, syncd run
    "syncd.sync",
    "syncd.audit",
    "syncd.doctor",
    "syncd.dropbox",
    "syncd.decide",
    "syncd.connectors.forwards",
    "syncd.connectors.forward_text",
    "syncd.connectors.mime",
    "syncd.connectors.ical",
    "syncd.crm.insight",
    "syncd.harvest.apply",
    "syncd.harvest.decide",
}


def test_import_of_the_cli_leaves_the_heavy_modules_to_the_commands() -> None:
    roots = sorted({m.split(".")[0] for m in DEFERRED})
    code = (
        "import json, sys; import syncd.cli; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {roots!r})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = set(json.loads(proc.stdout))
    assert "syncd.cli.run" in loaded  # the listing works: the commands themselves are there
    assert sorted(DEFERRED & loaded) == []


def test_help_lists_every_command_group() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "syncd", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("status", "sync", "audit", "doctor", "import", "report", "db", "mailbox"):
        assert f" {command} " in proc.stdout
