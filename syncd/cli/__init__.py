"""The ``syncd`` command: one module a command group (:mod:`.mailbox`, :mod:`.records`,
:mod:`.steer`, :mod:`.records_edit`, :mod:`.run`, :mod:`.quarantine`), their shared parts
in :mod:`.common`."""

from __future__ import annotations

import sys

from syncd.cli import (  # noqa: F401
    imports,
    insight,
    mailbox,
    ops,
    quarantine,
    records,
    records_edit,
    run,
    steer,
    worker,
)
from syncd.cli.common import app, say
from syncd.config import ConfigError
from syncd.crm.database import DatabaseError
from syncd.crm.loader import LoadError
from syncd.secrets import SecretsError

__all__ = ["app", "main"]


def main() -> None:
    try:
        app(prog_name="syncd")
    except (ConfigError, DatabaseError, LoadError, SecretsError) as exc:
        fail_code = 2 if isinstance(exc, ConfigError) else 1
        say(f"syncd: error: {exc}", sys.stderr)
        sys.exit(fail_code)
