"""Logging of every ``syncd`` command: one line per event on stderr, as text (for a
terminal and journald, which adds its own timestamps) or as JSON (``--log-format json``,
``SYNCD_LOG_FORMAT=json``, for log shippers), each naming the mailbox it is about.

The mailbox of an event is found, in this order: ``extra={"mailbox": NAME}`` given to the
log call; the mailbox whose pass runs in this thread (:func:`about`, set by the sync pass);
a message that starts with ``mailbox %r`` (the convention of syncd's own messages). Every
message has the credentials of any URL in it masked, and a newline in it (a server's
answer, a traceback at ``--verbose``) is escaped, so that one event is one line. A
library's warning (icalendar guessing the time zone a calendar names, say) is such an
event too (:func:`capture_warnings`), not Python's two lines of path and source.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TextIO

from syncd.connectors.transport import mask_urls

LogFormat = Literal["text", "json"]

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("mailbox", default=None)


@contextlib.contextmanager
def about(mailbox: str) -> Iterator[None]:
    """Events logged in this thread meanwhile are about ``mailbox`` (unless they say
    otherwise)."""
    token = _current.set(mailbox)
    try:
        yield
    finally:
        _current.reset(token)


def _named(record: logging.LogRecord) -> str | None:
    """The mailbox a message of the ``mailbox %r: ...`` convention names first."""
    args = record.args
    if (
        isinstance(record.msg, str)
        and record.msg.startswith("mailbox %r")
        and isinstance(args, tuple)
        and args
        and isinstance(args[0], str)
    ):
        return args[0]
    return None


def mailbox_of(record: logging.LogRecord) -> str | None:
    """The mailbox an event is about, if any (see the module's docstring)."""
    given = getattr(record, "mailbox", None)
    if isinstance(given, str):
        return given
    return _current.get() or _named(record)


def _one_line(text: str) -> str:
    return mask_urls(text).replace("\r", "\\r").replace("\n", "\\n")


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message``, on one line; ``mailbox 'NAME': `` is put before a message
    about a mailbox that does not start by naming it."""

    def format(self, record: logging.LogRecord) -> str:
        mailbox = mailbox_of(record)
        about = f"mailbox {mailbox!r}: " if mailbox and _named(record) != mailbox else ""
        line = f"{record.levelname} {record.name}: {about}{record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return _one_line(line)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (ISO 8601, with its offset), level, logger, message,
    and mailbox and exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC).astimezone().isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_urls(record.getMessage()),
        }
        mailbox = mailbox_of(record)
        if mailbox is not None:
            event["mailbox"] = mailbox
        if record.exc_info:
            event["exception"] = mask_urls(self.formatException(record.exc_info))
        return json.dumps(event, ensure_ascii=False)


class _Stderr(logging.StreamHandler):
    """A handler writing to ``sys.stderr`` as it is when an event is logged (a test, or a
    caller, may have replaced it since)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` for syncd: a warning as a log event of the ``py.warnings``
    logger, ``Kind (library): message`` (so it names the mailbox whose pass it came from),
    shown as Python's filters say (once per message and place, by default). A caller that
    gave a file of its own gets Python's text there."""
    if file is not None:
        with contextlib.suppress(OSError):  # as Python's own: a closed stream loses it
            file.write(warnings.formatwarning(message, category, filename, lineno, line))
        return
    library = _library(category, filename)
    logging.getLogger("py.warnings").warning("%s (%s): %s", category.__name__, library, message)


def _library(category: type[Warning], filename: str) -> str:
    """Who warned: the package of a warning of its own kind (icalendar's
    GloballyUniqueTZIDGuessed), else the package of the file that warned (a UserWarning of
    a library's, from ``site-packages/NAME/...``; syncd for its own), else that file's
    name."""
    package = category.__module__.partition(".")[0]
    if package != "builtins":
        return package
    path = Path(filename)
    if "site-packages" in path.parts[:-1]:
        return Path(path.parts[path.parts.index("site-packages") + 1]).stem
    if Path(os.path.abspath(filename)).is_relative_to(_PACKAGE):  # no file system call
        return "syncd"
    return path.stem


_PACKAGE = Path(os.path.abspath(__file__)).parent  # syncd's own files


def capture_warnings() -> None:
    """Every warning of this process logged by :func:`_show_warning` (the commands' and
    the parse workers' processes)."""
    warnings.showwarning = _show_warning


def setup(log_format: LogFormat = "text", verbose: bool = False) -> None:
    """Log to stderr in ``log_format``, at DEBUG with ``verbose`` (else INFO); replaces
    what an earlier call set up. Warnings are logged too (:func:`capture_warnings`)."""
    capture_warnings()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Stderr)]:
        root.removeHandler(handler)
    handler = _Stderr()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("alembic").setLevel(logging.DEBUG if verbose else logging.WARNING)
