"""Dropbox mailboxes: the salesperson's way in. A salesperson puts the dropbox (``crm@...``)
in BCC, or forwards a thread to it, and the mail is logged, from any mail client.

A dropbox is a mailbox of any kind added with ``--dropbox``. Its pass reads whole messages
(``syncd.config.ReadLimits``: each item keeps its bytes) and sorts each one
(:func:`sort_batch`) before the usual decision and recording:

- **refused**: a message whose sender is not a CRM user is never logged (skipped as
  ``refused``, with a warning naming the sender): anyone can write to the dropbox;
- **BCC'd** (nothing forwarded in it): the message itself is logged as the sender's own,
  as if their own mailbox had read it;
- **forwarded**: each forwarded original, inline (Gmail, Outlook, Apple Mail, Thunderbird)
  or attached as ``message/rfc822`` (``syncd.connectors.forwards``), is logged with its own
  participants, date and Message-ID (so a copy another mailbox reads is the same activity);
  ``[OPP-n]`` in the forward's subject or the first line of the salesperson's note links
  the deal by hand (reason ``manual``: the conversation follows it, no re-match undoes it);
- ``#nocrm`` (``dropbox.nocrm_word``) in the note removes the forwarded conversation from the
  CRM instead (:func:`mute`): its activities are deleted, and none of its messages is ever
  logged again, from any mailbox (skipped as ``nocrm``).

What a dropbox logs is logged on behalf of the salesperson who sent it: its sighting names
that user (``sightings.user_id``) and it counts as theirs (``syncd activities --user``),
never as the dropbox's own user's. The dropbox's own addresses (``dropbox.addresses``) are
never participants. A dropbox's items are logged even without a CRM participant, like an
item with a force label: the salesperson asked for it (private and blocklisted ones never
are). A dropbox has no calendar, address books or follow-ups of its own.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import compat32

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from syncd.batching import chunked
from syncd.config import LimitSettings, Settings
from syncd.connectors.forwards import unpack
from syncd.connectors.mime import UnreadableMessage, read_message
from syncd.crm import conversations
from syncd.crm.corrections import remove_activities
from syncd.crm.models import Activity, ActivityParticipant, DroppedItem
from syncd.crm.recorder import Decision
from syncd.crm.rows import LOOKUP_CHUNK
from syncd.crm.skips import Skip
from syncd.decide import describe
from syncd.items import MailItem, Quarantined, conversation_keys, thread_mark
from syncd.matching.matcher import CrmIndex, LinkDecision, UserRef

log = logging.getLogger("syncd.dropbox")

MUTE_SUBJECT = "(a conversation removed with {word})"


@dataclass
class Sorted:
    """A dropbox batch sorted: what to log (each with the user it is logged for, and the deal
    names a forward chose, by provider id: an invitation logged as its meeting keeps its
    mail's), the conversations to remove with who asked, what was refused or unreadable."""

    items: list[MailItem] = field(default_factory=list)
    behalf: dict[str, int] = field(default_factory=dict)  # provider id -> user id
    deals: dict[str, list[str]] = field(default_factory=dict)  # provider id -> tag names
    muted: list[tuple[MailItem, int]] = field(default_factory=list)  # (original, user id)
    skipped: list[Skip] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)


def sort_batch(
    items: Iterable[MailItem],
    users: dict[str, UserRef],
    settings: Settings,
    index: CrmIndex,
    mailbox: str,
) -> Sorted:
    """Sort a dropbox's messages (see the module's docstring). No message stops the batch: one
    that cannot be unpacked is quarantined with its reason and its bytes."""
    done = Sorted()
    word = settings.dropbox.nocrm_word.lower()
    limits = LimitSettings(**settings.limits.model_dump())  # the originals keep no bytes
    for item in items:
        user, refused = _sender(item, users, settings)
        if user is None:
            log.warning("dropbox %r: refused %r: %s", mailbox, item.provider_id, refused)
            done.skipped.append((item.provider_id, "refused", item.key))
            continue
        try:
            unpacked = unpack(item.raw, limits=limits) if item.raw is not None else None
        except (UnreadableMessage, ValueError) as exc:
            reason = f"dropbox: the forward cannot be unpacked: {exc}"
            done.quarantined.append(Quarantined(item.provider_id, reason, item.raw, "rfc822"))
            continue
        if unpacked is None or not unpacked.originals:  # BCC'd: the sender's own message
            own = without_dropbox(item, settings)
            done.items.append(own)
            done.behalf[own.provider_id] = user.id
            continue
        for problem in unpacked.problems:
            log.info("dropbox %r: %r: %s", mailbox, item.provider_id, problem)
        first_line = next((ln for ln in unpacked.note.splitlines() if ln.strip()), "")
        named = [*index.tags(item.subject), *index.tags(first_line)]
        muted = word in unpacked.note.lower()
        # the forward itself is never logged: its originals are (syncd audit finds it here)
        done.skipped.append((item.provider_id, "nocrm" if muted else "forwarded", item.key))
        for n, data in enumerate(unpacked.originals, 1):
            read = read_message(
                data, f"{item.provider_id}#forward-{n}", item.sent_at, limits=limits
            )
            if isinstance(read, Quarantined):
                done.quarantined.append(read)
                continue
            original = without_dropbox(read, settings)
            if muted:
                done.muted.append((original, user.id))
                continue
            done.items.append(original)
            done.behalf[original.provider_id] = user.id
            if named:
                done.deals[original.provider_id] = list(dict.fromkeys(t.lower() for t in named))
    return done


def _sender(
    item: MailItem, users: dict[str, UserRef], settings: Settings
) -> tuple[UserRef | None, str]:
    """The CRM user who sent a dropbox message, or None and why it is refused: a sender who
    is no user, or (``dropbox.authserv_ids`` set) whose From the receiving server did not
    authenticate (anyone can write any From)."""
    sender = item.sender
    user = users.get(sender.address) if sender is not None else None
    if sender is None or user is None:
        who = sender.address if sender is not None else "no sender"
        return None, f"{who} is not a CRM user (only users' mail is logged)"
    servers = settings.dropbox.authserv_ids
    if servers and not authenticated(item.raw, sender.address, servers):
        return None, (
            f"its From ({sender.address}) was not authenticated by {', '.join(servers)} "
            "(no DMARC, DKIM or SPF pass aligned with it in Authentication-Results)"
        )
    return user, ""


def authenticated(raw: bytes | None, address: str, servers: list[str]) -> bool:
    """Whether one of the receiving ``servers`` (their authserv-id) wrote, in an
    Authentication-Results header (RFC 8601), a DMARC pass for the From's domain, or a DKIM
    or SPF pass for a domain aligned with it (the same, or one a parent of the other). Only
    those servers' results count: a sender can write any header, but the receiving server
    removes results that claim its own id (RFC 8601 §5)."""
    if raw is None:
        return False
    domain = address.rpartition("@")[2].lower()
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw)
    wanted = {s.lower() for s in servers}
    for value in headers.get_all("Authentication-Results") or []:
        text = _COMMENT.sub("", str(value))
        serv, _, rest = text.partition(";")
        if serv.split()[0:1] != [] and serv.split()[0].lower() in wanted:
            for result in rest.split(";"):
                if _passes(result.split(), domain):
                    return True
    return False


_COMMENT = re.compile(r"\([^()]*\)")


def _passes(tokens: list[str], domain: str) -> bool:
    """One resinfo (``dkim=pass header.d=acme.test``) passes for ``domain``."""
    if not tokens or "=" not in tokens[0]:
        return False
    method, _, result = tokens[0].lower().partition("=")
    if result != "pass":
        return False
    props = dict(t.lower().split("=", 1) for t in tokens[1:] if "=" in t)
    if method == "dmarc":
        return props.get("header.from", "") == domain
    if method == "dkim":
        signer = props.get("header.d") or props.get("header.i", "").rpartition("@")[2]
    elif method == "spf":
        signer = props.get("smtp.mailfrom", "").rpartition("@")[2]
    else:
        return False
    return bool(signer) and (
        signer == domain or domain.endswith("." + signer) or signer.endswith("." + domain)
    )


def without_dropbox(item: MailItem, settings: Settings) -> MailItem:
    """The item as logged: no bytes kept, and the dropbox's own addresses not participants
    (every mailbox's copy alike: decide strips them too)."""
    own = set(settings.dropbox.addresses)
    people = tuple(p for p in item.participants if p.address not in own)
    if people == item.participants and item.raw is None:
        return item
    return replace(item, participants=people, raw=None)


def steer(decisions: list[Decision], sorted_: Sorted, index: CrmIndex) -> list[Decision]:
    """The decisions as the dropbox makes them: each for the user who sent it, and a deal a
    forward names linked by hand (``manual``) in place of the deals weaker rules chose."""
    steered = []
    for d in decisions:
        pid = d.item.provider_id
        names = sorted_.deals.get(pid, [])
        chosen = [opp.id for name in names if (opp := index.opportunity_by_tag(name)) is not None]
        match = d.match
        if chosen:
            kept = [
                lk
                for lk in match.links
                if lk.type != "opportunity" or (lk.reason == "tag" and lk.target_id not in chosen)
            ]
            manual = [LinkDecision("opportunity", opp_id, "manual") for opp_id in chosen]
            match = replace(match, links=(*kept, *manual))
        steered.append(Decision(d.item, match, sorted_.behalf.get(pid)))
    return steered


def resolve_inline(session: Session, sorted_: Sorted) -> None:
    """An original forwarded inline carries no Message-ID: keyed by its headers' digest it
    would be a second activity beside the stored copy of the same message, and a ``#nocrm``
    would find no conversation. Each is looked for among the stored mail (same sender, same
    subject, sent within INLINE_SLACK: inline dates are to the minute) and, found, takes
    that activity's key and conversation."""
    sorted_.items = [_resolved(session, item) for item in sorted_.items]
    muted = []
    for item, user_id in sorted_.muted:
        found = _resolved(session, item)
        if found is item and item.message_id is None:
            log.warning(
                "#nocrm: the inline original %r is not among the stored mail: its own "
                "conversation is kept out, no stored one is removed",
                item.subject[:80],
            )
        muted.append((found, user_id))
    sorted_.muted = muted


INLINE_SLACK = timedelta(seconds=90)


def _resolved(session: Session, item: MailItem) -> MailItem:
    sender = item.sender
    if item.message_id is not None or sender is None:
        return item
    found = session.execute(
        select(Activity.key, Activity.thread_key)
        .join(ActivityParticipant, ActivityParticipant.activity_id == Activity.id)
        .where(
            ActivityParticipant.address == sender.address,
            ActivityParticipant.role == "from",
            Activity.kind == "email",
            Activity.subject == item.subject,
            Activity.occurred_at >= item.sent_at - INLINE_SLACK,
            Activity.occurred_at <= item.sent_at + INLINE_SLACK,
        )
        .order_by(Activity.id)
        .limit(1)
    ).first()
    if found is None:
        return item
    return replace(item, key=found.key, thread_key=found.thread_key, related_keys=())


def deal_names(sorted_: Sorted) -> set[str]:
    """Every tag name a forward of this batch names (the index looks them up)."""
    return {name for names in sorted_.deals.values() for name in names}


def mute(
    session: Session, settings: Settings, muted: list[tuple[MailItem, int]], now: datetime
) -> int:
    """Remove the conversations of these forwarded originals from the CRM (``#nocrm``), in
    the batch's transaction: every stored activity of them is deleted (``syncd activity
    delete``'s way: tasks cancelled, deals restated, the rest settled), and their
    conversation keys are kept as dropped whole threads (by digest), so none of their
    messages is logged again. Only a conversation the forwarding user is part of (a
    participant of one of its stored messages) is removed; any other is left, with a
    warning, and so is one that cannot be removed (each in a savepoint of its own).
    Returns how many activities were removed."""
    removed = 0
    for original, user_id in muted:
        try:  # one conversation that cannot be removed never stops the mailbox
            with session.begin_nested():
                removed += _mute_one(session, settings, original, user_id, now)
        except OperationalError:
            raise  # the database itself, not this conversation
        except Exception as exc:
            log.warning(
                "%s: the conversation of %r was not removed: %s",
                settings.dropbox.nocrm_word,
                original.subject[:80],
                describe(exc),
            )
    return removed


def _mute_one(
    session: Session, settings: Settings, original: MailItem, user_id: int, now: datetime
) -> int:
    keys = set(conversation_keys(original))
    components = conversations.thread_components(session, keys)
    found = sorted({n.id for c in components for n in c})
    if not _party_to(session, user_id, found):
        log.warning(
            "%s: %r names a conversation its sender is not part of: left as it is",
            settings.dropbox.nocrm_word,
            original.subject[:80],
        )
        return 0
    activities: list[Activity] = []
    for chunk in chunked(found, LOOKUP_CHUNK):
        activities.extend(session.scalars(select(Activity).where(Activity.id.in_(chunk))))
    keys.update(key for _, key in conversations.thread_keys_of(session, found))
    subject = MUTE_SUBJECT.format(word=settings.dropbox.nocrm_word)
    for key in sorted(keys):
        mark = thread_mark(key)
        if session.get(DroppedItem, mark) is None:
            session.add(DroppedItem(key=mark, dropped_at=now, subject=subject, whole_thread=True))
    session.flush()
    done = remove_activities(session, settings, activities, now)
    log.info(
        "%d activit(ies) of a conversation removed with %s (%d sighting(s))",
        len(activities),
        settings.dropbox.nocrm_word,
        done.sightings,
    )
    return len(activities)


def _party_to(session: Session, user_id: int, stored: list[int]) -> bool:
    """Whether the user is part of the conversation: a participant of one of its stored
    activities (none stored: nothing is removed, its keys are only kept out from now on)."""
    if not stored:
        return True  # nothing to remove: only its keys are kept out from now on
    for chunk in chunked(stored, LOOKUP_CHUNK):
        if session.scalar(
            select(ActivityParticipant.id)
            .where(
                ActivityParticipant.activity_id.in_(chunk), ActivityParticipant.user_id == user_id
            )
            .limit(1)
        ):
            return True
    return False
