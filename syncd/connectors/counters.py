"""What the connectors count for the Prometheus metrics (``syncd.metrics`` serves them):
requests sent to a provider, throttles (a 429/503, a Retry-After, Gmail's
``rateLimitExceeded``) and retries, by provider (the connector kind).

They live here, beside the connectors, so that counting never makes a connector import
the CRM or the command line; :mod:`syncd.connectors.retry` counts every try it runs.
"""

from __future__ import annotations

from prometheus_client import Counter

REQUESTS = Counter(
    "syncd_provider_requests",
    "Requests sent to a provider (an HTTP call, a $batch, an IMAP command), by connector kind.",
    ["provider"],
)
THROTTLES = Counter(
    "syncd_provider_throttles",
    "Requests a provider refused for its rate limits (429/503, a Retry-After, Gmail's "
    "rateLimitExceeded), by connector kind.",
    ["provider"],
)
RETRIES = Counter(
    "syncd_provider_retries",
    "Requests tried again after a transient failure, by connector kind.",
    ["provider"],
)
