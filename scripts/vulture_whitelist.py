"""Names vulture cannot see used: called by a framework, by name through a string, or
part of a protocol. `scripts/test` runs vulture on syncd, tests and bench with this file (decorated commands,
validators and fixtures, test functions and http.server handlers are passed over by
name); anything else it reports is dead code, to delete or to finish."""

# ruff: noqa
# mypy: ignore-errors
from syncd.cli import mailbox
from syncd.connectors.imap import session as imap_session
from syncd.connectors.kind import KindSettings, SignInOptions
from syncd.connectors.memory import connector as memory
from syncd.connectors.microsoft import client as graph_client
from syncd.crm import database, models, reports
from syncd.config import _Section

# Typer reads a generated command's options from its signature
mailbox._command.__signature__, mailbox._command.__annotations__

# pydantic reads these
_Section.model_config, KindSettings.model_config, SignInOptions.model_config

# the registry names these by "module:attribute" strings (syncd/connectors/registry.py)
memory.open_memory

# msal/O365 call these
graph_client.EncryptedCache.load_token, graph_client.EncryptedCache._cache
graph_client._msal_client
imap_session.normalise_times  # imapclient reads it

# SQLAlchemy: event listeners, a TypeDecorator's protocol, columns
database._sqlite_pragmas, database._sqlite_begin, database._sqlite_busy, database.isolation_level
models.impl, models.cache_ok, models.process_bind_param, models.process_result_value
models.Sighting.seen_at, models.RematchRequest.queued_at

# TypedDict keys of the JSON reports
reports.TaskRow.in_calendar

# the Google emulator dispatches a discovery method to `_<resource>_<method>` by name
from tests.emulators.google import calendar as gcal, gmail as gmail_emulator

gcal.Calendar._events_list, gcal.Calendar._events_insert, gcal.Calendar._events_import
gcal.Calendar._events_get, gcal.Calendar._events_patch, gcal.Calendar._events_delete
gmail_emulator.Gmail._getProfile, gmail_emulator.Gmail._labels_list
gmail_emulator.Gmail._messages_list, gmail_emulator.Gmail._messages_get
gmail_emulator.Gmail._history_list
# http.server reads these
from tests.emulators import http as emulator_http

emulator_http._Handler.protocol_version, emulator_http._Handler.close_connection
# re-parsers the quarantine tests name as "module:function" strings
from tests import test_quarantine

test_quarantine.crashing, test_quarantine.fixed_rfc822
# the registry opens the Microsoft kind by name
from syncd.connectors.microsoft import connector as graph_connector

graph_connector.MicrosoftConnector

