"""A local Google emulator: OAuth 2.0 token endpoint, Gmail API v1 and Calendar v3, over real
HTTP.

Written from the public API reference, not from what syncd sends:
- paths, methods and query parameters come from the discovery document shipped with
  google-api-python-client (``gmail.v1.json``): a parameter the document does not list is
  refused with HTTP 400, as Google does;
- semantics follow ``../shared/PROVIDER-APIS.md`` (Gmail list/get/history, batch, quota and
  error shapes; OAuth refresh-token and JWT-bearer grants).

Mailboxes live in memory, seeded from RFC 5322 messages. Faults can be queued. Not here:
People (no issue needs it yet).

- ``discovery``: the routes and quota costs, read from the discovery documents;
- ``state``: mailboxes, messages, Google's error shape, paging;
- ``oauth``: clients, service accounts, the consent page and the token endpoint;
- ``gmail``: labels, messages and history (see its docstring for history ids and labels);
- ``calendar``: the primary calendar's events, sync tokens and their 410;
- ``emulator``: :class:`GoogleEmulator`, routing, quota and the batch endpoint.

The HTTP server, injected faults and counters are shared with the Microsoft emulator
(``tests/emulators/http.py``, ``faults.py``).
"""

from .discovery import CALENDAR, DISCOVERY, GMAIL, ROUTES, UNITS, USER_UNITS_PER_MINUTE
from .emulator import GoogleEmulator
from .gmail import HISTORY_FIELDS, SYSTEM_LABELS
from .state import GmailError, Mailbox, Message

__all__ = [
    "CALENDAR",
    "DISCOVERY",
    "GMAIL",
    "HISTORY_FIELDS",
    "ROUTES",
    "SYSTEM_LABELS",
    "UNITS",
    "USER_UNITS_PER_MINUTE",
    "GmailError",
    "GoogleEmulator",
    "Mailbox",
    "Message",
]
