"""The per-item decision of a sync: is this item logged, and linked to what?

:func:`decide` runs each item of a batch through the checks that need no CRM (excluded
labels, bulk mail, auto-replies; a mail's invitations stand in for it), fits it to the
CRM's columns and date range (:func:`fit_item`), matches it (``syncd.matching.matcher``),
then runs the checks that need the CRM (private, blocklisted, internal-only). An item that
cannot be decided is quarantined with its reason; it never stops its batch.

Also here: :class:`PassIndex`, the CRM index one pass decides against, and
:func:`describe`, an exception as one line fit for a user (used wherever a sync reports
an error).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session, sessionmaker

from syncd.config import ExclusionSettings, Settings
from syncd.crm import lookups, recorder
from syncd.crm.skips import Skip
from syncd.items import (
    ADDRESS_LENGTH,
    EARLIEST,
    FUTURE_YEARS,
    ExclusionReason,
    Item,
    MailItem,
    MeetingItem,
    Participant,
    Quarantined,
    fit,
    latest,
)
from syncd.matching.exclusions import exclusion, label_hit, mail_exclusion
from syncd.matching.matcher import CrmIndex, match

log = logging.getLogger("syncd.sync")


# CRM records and look-ups a pass's index holds at most: past it, the next batch starts
# from the base again (a few hundred bytes each: memory stays bounded, whatever the CRM)
INDEX_HELD = 50_000


class PassIndex:
    """The CRM index a pass decides against. The users, the company's domains and the
    exclusions are loaded once, when something is first to be matched; each batch then adds
    what its items can match and the index does not hold yet (:meth:`load`,
    ``syncd.crm.lookups``), so a pass holds no more of the CRM than its mail touches, at
    most about INDEX_HELD records, whatever the CRM's size. Storing a batch adds the deals
    its conversations need and teaches it the tags it stored (``syncd.settle``); when that
    transaction fails, :meth:`forget` drops what it holds (what it learned is void), and
    the next use starts from the base again.

    The index is read again from the database once it is ``lookups.VIEW_SECONDS`` old: a
    long pass never records against a CRM older than that, which is what lets the re-match
    after a ``syncd crm load`` leave out the activities recorded since
    (``syncd.crm.rematch.queued_activities``)."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings
        self._base: CrmIndex | None = None
        self._index: CrmIndex | None = None
        self._read_at = 0.0  # time.monotonic() when the base was read
        self._dropped = False

    def load(self, items: Iterable[Item]) -> CrmIndex:
        """The index these items are decided against."""
        if self._base is not None and time.monotonic() - self._read_at > lookups.VIEW_SECONDS:
            self._base = self._index = None  # read the CRM again
        with self.sessions() as session:
            index = self._current(session)
            if index.held() > INDEX_HELD:
                index = self._index = self._base_of(session).for_batch()
            lookups.fill(session, index, items)
        return index

    def load_tags(self, names: set[str]) -> None:
        """The deals these tag names (lower case) name, added to the index."""
        if not names:
            return
        with self.sessions() as session:
            lookups.fill_tags(session, self._current(session), names)

    def get(self) -> CrmIndex:
        """The index as it stands (what the settling of a stored batch adds to)."""
        if self._index is not None:
            return self._index
        with self.sessions() as session:
            return self._current(session)

    def forget(self) -> None:
        self._index = None

    def mark_dropped(self) -> None:
        """Items were dropped in this pass (``#nocrm``): from now on every batch of it looks
        its keys up among the dropped, whatever index it starts from."""
        self._dropped = True
        for index in (self._base, self._index):
            if index is not None:
                index.any_dropped = True

    def _current(self, session: Session) -> CrmIndex:
        if self._index is None:
            self._index = self._base_of(session).for_batch()
        return self._index

    def _base_of(self, session: Session) -> CrmIndex:
        if self._base is None:
            self._read_at = time.monotonic()
            self._base = lookups.base_index(session, self.settings)
            self._base.any_dropped |= self._dropped
        return self._base


def decide(
    items: Iterable[Item],
    index: CrmIndex,
    settings: Settings,
    excluded: Counter[ExclusionReason],
    quarantined: list[Quarantined] | None = None,
    skipped: list[Skip] | None = None,
    floor: datetime | None = None,
    forced: bool = False,
) -> list[recorder.Decision]:
    """Filter and match a batch. A mail that carries an invitation is logged as the meeting.
    An item whose matching fails goes to ``quarantined`` (when given) with its reason; it
    never stops the batch. The result does not depend on how items are cut into batches.
    ``skipped`` (when given) gets (provider id, reason, key) of each item an exclusion skips.
    ``floor``: mail sent before it is outside the mailbox's window (``--since``).
    ``forced``: every item is logged as if a force label said so (a dropbox's: the
    salesperson asked for it)."""
    decisions = []
    skips = skipped if skipped is not None else []
    dropboxes = set(settings.dropbox.addresses)
    for raw_item, labelled in _expand(items, settings.exclusions, excluded, skips, floor, forced):
        try:
            item = fit_item(_without(raw_item, dropboxes), datetime.now(UTC))
            m = match(item, index)
            excluded_by = exclusion(item, m, index, labelled)
        except Exception as exc:  # one item never stops its mailbox
            if quarantined is None:
                raise
            reason = str(exc) if isinstance(exc, OutOfRange) else f"cannot match: {describe(exc)}"
            log.warning("item %r not logged: %s", raw_item.provider_id, reason)
            quarantined.append(Quarantined(raw_item.provider_id, reason))
            continue
        if excluded_by:
            excluded[excluded_by.reason] += 1
            skips.append((raw_item.provider_id, excluded_by.reason, raw_item.key))
            continue
        decisions.append(recorder.Decision(item, m))
    return decisions


def _without(item: Item, addresses: set[str]) -> Item:
    """The item without these participants: the dropboxes' own addresses (a Cc: to the
    dropbox is no participant, whichever mailbox's copy is stored first)."""
    if not addresses or not any(p.address in addresses for p in item.participants):
        return item
    people = tuple(p for p in item.participants if p.address not in addresses)
    return replace(item, participants=people)


class OutOfRange(ValueError):
    """An item whose time no rule can work with (before 1970, or years ahead)."""


def fit_item(item: Item, now: datetime) -> Item:
    """The item as the CRM can keep it: keys and ids that fit their columns (a stable hash
    where they do not), addresses that fit theirs, and a time between 1970 and
    ``items.latest`` (else :class:`OutOfRange`, and the item is quarantined: no rule ever
    sees year 9999). A meeting's end counts too: the rules work from it."""
    _check_times(item, now)
    people = _fit_participants(item.participants)
    key, provider_id = fit(item.key), fit(item.provider_id)
    if isinstance(item, MailItem):
        thread_key = fit(item.thread_key)
        related = tuple(fit(k) for k in item.related_keys)
        if (key, provider_id, thread_key, related, people) == (
            item.key,
            item.provider_id,
            item.thread_key,
            item.related_keys,
            item.participants,
        ):
            return item  # it fits as it is (almost every item): no copy
        return replace(
            item,
            key=key,
            provider_id=provider_id,
            thread_key=thread_key,
            related_keys=related,
            participants=people,
        )
    if (key, provider_id, people) == (item.key, item.provider_id, item.participants):
        return item
    return replace(item, key=key, provider_id=provider_id, participants=people)


def _check_times(item: Item, now: datetime) -> None:
    """Raise :class:`OutOfRange` for a time outside 1970 .. now + FUTURE_YEARS."""
    times = [item.sent_at] if isinstance(item, MailItem) else [item.start, item.end]
    for when in times:
        if when.tzinfo is not None and not (EARLIEST <= when <= latest(now)):
            raise OutOfRange(
                f"date out of range: {when.isoformat()} (syncd keeps 1970 to now + "
                f"{FUTURE_YEARS} years)"
            )


def _unfit_address(address: str) -> bool:
    return len(address) > ADDRESS_LENGTH or not address.isprintable()


def _fit_participants(people: Sequence[Participant]) -> tuple[Participant, ...]:
    """Participants whose address fits the column: one that does not becomes a stable,
    undeliverable stand-in (``<hash>@invalid.invalid``)."""
    if not any(_unfit_address(p.address) for p in people):
        return tuple(people)
    return tuple(
        replace(p, address=fit(p.address, 0)[5:37] + "@invalid.invalid")
        if _unfit_address(p.address)
        else p
        for p in people
    )


def describe(exc: BaseException) -> str:
    """An exception as one line a user may read: never the SQL or parameters of a database
    error (they may hold anything an item carried)."""
    if isinstance(exc, StatementError):
        orig = exc.orig
        if orig is None:
            return f"the CRM database refused it ({exc.__class__.__name__})"
        text = str(orig).splitlines()[0] if str(orig) else ""
        return f"the CRM database refused it ({orig.__class__.__name__}: {text[:200]})"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{exc.__class__.__name__}: {text[:300]}"


def _expand(
    items: Iterable[Item],
    rules: ExclusionSettings,
    excluded: Counter[ExclusionReason],
    skips: list[Skip],
    floor: datetime | None = None,
    force_all: bool = False,
) -> Iterator[tuple[Item, bool]]:
    """Items that pass the checks needing no CRM, each with whether a label (or
    ``force_all``) forces it in."""
    for item in items:
        forced = force_all or label_hit(item, rules.force_labels) is not None
        if isinstance(item, MeetingItem):
            if label_hit(item, rules.labels):
                excluded["excluded label"] += 1
                skips.append((item.provider_id, "excluded label", item.key))
            else:
                yield item, forced
            continue
        if floor is not None and item.sent_at < floor:
            excluded["outside the window"] += 1
            skips.append((item.provider_id, "outside the window", item.key))
            continue
        excluded_by = mail_exclusion(item, rules.labels, forced)
        if excluded_by:
            excluded[excluded_by.reason] += 1
            skips.append((item.provider_id, excluded_by.reason, item.key))
            continue
        for one in _invitations_or_itself(item, excluded, skips):
            yield one, forced


def _invitations_or_itself(
    item: MailItem, excluded: Counter[ExclusionReason], skips: list[Skip]
) -> Iterator[MailItem | MeetingItem]:
    """A mail's invitations stand in for it (an attendee's REPLY is no meeting)."""
    if not item.invitations:
        yield item
        return
    answers = 0
    for invite in item.invitations:
        if invite.method == "REPLY":
            excluded["invitation-reply"] += 1  # an attendee's answer, not a meeting
            answers += 1
        else:
            yield invite
    if answers == len(item.invitations):  # nothing of the mail is logged
        skips.append((item.provider_id, "invitation-reply", item.key))
