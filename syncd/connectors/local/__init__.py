"""``kind = "local"``: a Maildir, mbox archives (a Google Takeout), folders of .eml files and
a vdir calendar on
disk; the embedded default that needs no account. :mod:`.connector` names the sources,
:mod:`.maildir`, :mod:`.mbox` and :mod:`.vdir` read them, :mod:`.files` holds the safe file
reads and what a source makes of a file it does not read, :mod:`.signin` is ``mailbox add``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from syncd.connectors.kind import Kind, KindSettings, option


class LocalSettings(KindSettings):
    maildir: Path | None = Field(
        None, json_schema_extra=option("--maildir", "local: the Maildir (holding cur/ new/).")
    )
    mbox: list[Path] = Field(
        default_factory=list,
        json_schema_extra=option(
            "--mbox", "local: an mbox archive (e.g. Google Takeout); repeatable."
        ),
    )
    eml: list[Path] = Field(
        default_factory=list,
        json_schema_extra=option("--eml", "local: a folder of .eml files; repeatable."),
    )
    calendar: Path | None = Field(
        None,
        json_schema_extra=option(
            "--calendar",
            "local: a vdir calendar folder of .ics files; follow-up tasks are written into it.",
        ),
    )


KIND = Kind(
    name="local",
    summary="--maildir DIR [--calendar DIR] [--mbox FILE ...] [--eml DIR ...]",
    settings=LocalSettings,
    open="syncd.connectors.local.connector:LocalConnector",
    add="syncd.connectors.local.signin:add",
    probe="syncd.connectors.local.probe:probe",
    holdings="syncd.connectors.local.probe:holdings",
)
