"""Prometheus metrics of ``syncd run`` and ``syncd worker``, served at ``metrics.address``
(``HOST:PORT``; empty, the default: none) on ``/metrics``.

Two sources, so that every process shows the truth:

- read from the CRM database at each scrape (:class:`CrmCollector`), the same whichever
  process synced a mailbox: per mailbox its state, last success, lag, items logged,
  items quarantined, whether its task write-back fails; the tasks not yet written;
- counted in this process: passes and batches (durations), items skipped by reason
  (:func:`observe_pass`, :func:`observe_batch`), and requests, throttles and retries by
  provider (:mod:`syncd.connectors.counters`, counted by the connectors' retry policy).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import ConfigError, Settings
from syncd.connectors import counters  # noqa: F401  (its counters are served too)
from syncd.crm.models import MailboxState
from syncd.crm.reports import metrics_report
from syncd.report import SyncReport

log = logging.getLogger("syncd.metrics")

STATES: tuple[MailboxState, ...] = ("ok", "failing", "parked")
PASS_SECONDS = Histogram(
    "syncd_pass_duration_seconds",
    "How long one pass of one mailbox took (every source read, rules, task write-back).",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
BATCH_SECONDS = Histogram(
    "syncd_batch_duration_seconds",
    "How long one batch took: read from the provider, decided and committed.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
PASSES = Counter(
    "syncd_passes",
    "Passes of a mailbox by outcome: ok, failing, parked, busy (synced elsewhere), yielded "
    "(its time budget ran out; the next pass goes on), stopped.",
    ["outcome"],
)
SKIPPED = Counter(
    "syncd_mailbox_items_skipped",
    "Items read and not logged, by mailbox and reason (exclusion rules).",
    ["mailbox", "reason"],
)


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9108`` for IPv6) -> (host, port); ConfigError naming the key,
    the value and the fix."""
    host, colon, port = address.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(
            f"key 'metrics.address': value {address!r} is not HOST:PORT; give for example "
            "'127.0.0.1:9108' (this machine's scraper only), '0.0.0.0:9108' (any), or '' for "
            "no metrics"
        )
    return host, int(port)


class CrmCollector(Collector):
    """The metrics read from the CRM database at each scrape (any process's passes)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "syncd_database_up", "1 when the CRM database answered this scrape, else 0."
        )
        try:
            with self.sessions() as session:
                report = metrics_report(session, datetime.now(UTC))
        except Exception as exc:  # the scrape says so; syncd runs on
            log.warning("metrics: cannot read the CRM database: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        state = GaugeMetricFamily(
            "syncd_mailbox_state",
            "1 for the state the mailbox is in (ok, failing, parked), 0 for the others.",
            labels=["mailbox", "kind", "state"],
        )
        success = GaugeMetricFamily(
            "syncd_mailbox_last_success_timestamp_seconds",
            "When the mailbox's last pass succeeded (Unix time); absent before the first.",
            labels=["mailbox"],
        )
        lag = GaugeMetricFamily(
            "syncd_mailbox_lag_seconds",
            "Seconds since the start of the mailbox's last pass that read everything (never "
            "caught up: since its first attempt); absent before its first attempt.",
            labels=["mailbox"],
        )
        logged = CounterMetricFamily(
            "syncd_mailbox_items_logged", "Items the mailbox logged.", labels=["mailbox"]
        )
        quarantined = GaugeMetricFamily(
            "syncd_mailbox_items_quarantined",
            "The mailbox's items syncd could not read ('syncd quarantine list').",
            labels=["mailbox"],
        )
        writer = GaugeMetricFamily(
            "syncd_mailbox_writeback_failing",
            "1 when the calendar refused the mailbox's follow-up tasks last time, else 0.",
            labels=["mailbox"],
        )
        for m in report.mailboxes:
            for s in STATES:
                state.add_metric([m.name, m.kind, s], 1 if m.state == s else 0)
            if m.last_success is not None:
                success.add_metric([m.name], m.last_success.timestamp())
            if m.lag_seconds is not None:
                lag.add_metric([m.name], m.lag_seconds)
            logged.add_metric([m.name], m.items_logged)
            quarantined.add_metric([m.name], m.quarantined)
            writer.add_metric([m.name], 1 if m.writer_failing else 0)
        tasks = GaugeMetricFamily(
            "syncd_tasks_unwritten",
            "Follow-up tasks not yet in a calendar: pending (to write), failing (refused).",
            labels=["state"],
        )
        tasks.add_metric(["pending"], report.tasks_pending)
        tasks.add_metric(["failing"], report.tasks_failing)
        yield from (state, success, lag, logged, quarantined, writer, tasks)


_served: set[str] = set()
_serving = threading.Lock()


def serve(settings: Settings, sessions: sessionmaker[Session]) -> None:
    """Serve the metrics at ``metrics.address``; nothing when it is empty, or when this
    process serves them already. A bad address, or one that cannot be bound, is a
    ConfigError naming the key and the fix."""
    address = settings.metrics.address.strip()
    if not address:
        return
    host, port = parse_address(address)
    with _serving:
        if address in _served:
            return
        collector = CrmCollector(sessions)
        REGISTRY.register(collector)
        try:
            start_http_server(port, addr=host, registry=REGISTRY)
        except OSError as exc:
            REGISTRY.unregister(collector)
            raise ConfigError(
                f"key 'metrics.address': cannot serve the metrics at {address!r} "
                f"({exc.strerror or exc}); give a free port on an address of this machine, "
                "or '' for no metrics"
            ) from None
        _served.add(address)
    log.info("metrics served at http://%s/metrics", address)


def observe_pass(report: SyncReport, seconds: float) -> None:
    """Count what one pass of one mailbox did, and how long it took."""
    if report.busy:
        outcome = "busy"
    elif not report.ok:
        outcome = report.state
    elif report.stopped:
        outcome = "stopped"
    else:
        outcome = "yielded" if report.yielded else "ok"
    PASSES.labels(outcome).inc()
    if not report.busy:
        PASS_SECONDS.observe(seconds)


def observe_batch(mailbox: str, seconds: float, skipped: Mapping[str, int]) -> None:
    """One batch of a mailbox: how long it took, and what it skipped, by reason."""
    BATCH_SECONDS.observe(seconds)
    for reason, n in skipped.items():
        if n:
            SKIPPED.labels(mailbox, reason).inc(n)
