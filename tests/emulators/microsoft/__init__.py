"""A local Microsoft emulator: the identity platform (v2.0) and Microsoft Graph v1.0, over TLS.

Written from the public reference (``../shared/PROVIDER-APIS.md`` collects the semantics and
their sources), not from what syncd sends:

- Identity, at ``https://127.0.0.1:PORT/{tenant}``: the OpenID configuration msal reads
  (``/v2.0/.well-known/openid-configuration``), the token endpoint (client credentials with
  a secret or a certificate assertion, scope ``…/.default`` only; refresh token; device
  code) and the device authorization endpoint; errors in Microsoft's shape
  (``invalid_client`` AADSTS7000215, ``unauthorized_client`` AADSTS700016, ``invalid_scope``
  AADSTS1002012, ``invalid_grant`` AADSTS50173, ``authorization_pending``).
- Graph, at ``https://127.0.0.1:PORT/v1.0``: message delta per mail folder (``$select``,
  ``$expand``, ``$orderby=receivedDateTime desc``, ``Prefer: odata.maxpagesize``,
  ``@odata.nextLink``/``@odata.deltaLink``, ``@removed``, 410 ``syncStateNotFound`` for a
  token it no longer knows, pages in no particular order), ``calendarView/delta`` (400 without
  a window), events (``POST`` idempotent by ``transactionId``, ``PATCH``, ``GET`` with
  ``$expand=singleValueExtendedProperties``), To Do lists and tasks, ``$batch`` (at most 20,
  unique ids, ``dependsOn`` only on earlier ids, fully parallel or fully sequential, 424 after
  a failure, answers in any order), ``/me`` refused to app tokens.
- Graph's schema comes from Microsoft's generated models (``schema.py``, msgraph-sdk):
  a ``$select``, ``$expand``, ``$filter`` or ``$orderby`` naming a property the entity does
  not have, and a request body property the type does not have (also inside ``$batch``), are
  refused with 400 in Graph's error shape. A message has no ``sensitivity``: it is served only
  as the MAPI property PidTagSensitivity through ``$expand=singleValueExtendedProperties``.
- A message's MIME content, ``GET …/messages/{id}/$value`` (``text/plain``): the bytes of a
  message seeded from MIME (``deliver_mime``, its JSON properties read from its headers),
  else a MIME rendering of the message's properties, as Exchange renders a stored item.
- Bodies: ``body`` is HTML unless ``Prefer: outlook.body-content-type="text"`` (echoed in
  ``Preference-Applied``); ``bodyPreview`` is the first 255 characters of the text body.
- Item ids: each message has a REST id that changes when it moves to another folder and an
  immutable id that does not; answers carry the immutable one only to requests that send
  ``Prefer: IdType="ImmutableId"``.
- Throttling per mailbox, as documented: a fifth concurrent request to one mailbox gets
  429 ``ApplicationThrottled`` with Retry-After (batch items count one each), and an optional
  request-rate window (``rate_limit``). Faults can be queued: a status (5xx, 429, 503 with
  Retry-After), a dropped connection, a slow answer.

Not here: recurring-series expansion (every event is a single instance), attachments,
subscriptions, mail folders other than the well-known ones syncd reads.

The package is split like the connector, one part of the provider per module (each part a
mixin over ``state.GraphState``):

- ``state``: app registrations, grants, users and their collections, Graph's error shape;
- ``identity``: the identity platform (sign-in, tokens) and the bearer check of Graph;
- ``schema`` and ``odata``: Graph's entity schema, query options, ``Prefer``, ``$expand``;
- ``mail``, ``calendar``, ``todo``: each resource, seeded and served; ``mime``: a message's
  MIME content (``$value``), and messages seeded from MIME;
- ``delta``: message and calendar delta rounds; ``batch``: ``$batch``;
- ``graph``: :class:`MicrosoftEmulator`, routing and per-mailbox throttling.

The HTTP(S) server, injected faults and counters are shared with the Google emulator
(``tests/emulators/http.py``, ``faults.py``, ``tls.py``).
"""

from ..tls import make_tls
from .batch import MAX_BATCH
from .calendar import WINDOWS_ZONES
from .delta import DEFAULT_PAGE, DELTA_QUERY
from .graph import MicrosoftEmulator
from .identity import make_client_certificate
from .mail import PREVIEW_CHARS, SENSITIVITIES, SENSITIVITY_TAG, WELL_KNOWN_FOLDERS
from .mime import MIME_TYPE
from .odata import OUTLOOK_TYPES
from .state import (
    APP_PERMISSIONS,
    GRAPH_DEFAULT_SCOPE,
    MAILBOX_CONCURRENCY,
    App,
    Grant,
    GraphError,
    Record,
    User,
)
from .todo import TODO_QUERY

__all__ = [
    "APP_PERMISSIONS",
    "DEFAULT_PAGE",
    "DELTA_QUERY",
    "GRAPH_DEFAULT_SCOPE",
    "MAILBOX_CONCURRENCY",
    "MAX_BATCH",
    "MIME_TYPE",
    "OUTLOOK_TYPES",
    "PREVIEW_CHARS",
    "SENSITIVITIES",
    "SENSITIVITY_TAG",
    "TODO_QUERY",
    "WELL_KNOWN_FOLDERS",
    "WINDOWS_ZONES",
    "App",
    "Grant",
    "GraphError",
    "MicrosoftEmulator",
    "Record",
    "User",
    "make_client_certificate",
    "make_tls",
]
