"""What one message or meeting tells of the people its mailbox's user knows (pure).

A message the user sent: every recipient is someone the user wrote to (``sent``, the
strongest sign of a real person). A message the user received: its sender wrote to the
user (``received``), unless it is bulk mail or an auto-reply, which only mark the sender as
such; the others on it (To, Cc) were ``copied``. A meeting: everyone on it but the user
(``meeting``). A card of the user's address book: its addresses were saved by the user
(``saved``). The user's own addresses are never people of their own mailbox.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from syncd.connectors.contacts import Card
from syncd.harvest.people import People, merge_key
from syncd.items import MailItem, MeetingItem


def is_bulk(item: MailItem) -> bool:
    """Mailing-list or bulk mail (List-Id, List-Unsubscribe, Precedence bulk/list/junk)."""
    return bool(item.list_id or item.list_unsubscribe) or (
        (item.precedence or "").lower() in {"bulk", "list", "junk"}
    )


def is_auto_reply(item: MailItem) -> bool:
    """An out-of-office or other automatic reply (Auto-Submitted, X-Autoreply ...)."""
    submitted = (item.auto_submitted or "").split(";")[0].strip().lower()
    return bool(submitted and submitted != "no") or bool(item.autoreply_header)


def see_mail(people: People, item: MailItem, mailbox: str, own: Collection[str]) -> None:
    """Add one message of ``mailbox``; ``own``: the merge keys of its user's addresses."""
    sender = item.sender
    when = item.sent_at
    if sender is not None and merge_key(sender.address) in own:
        for p in item.participants:
            if p.role in ("to", "cc", "bcc") and merge_key(p.address) not in own:
                people.see("sent", p.address, p.name, when, mailbox)
        return
    bulk, auto = is_bulk(item), is_auto_reply(item)
    for p in item.participants:
        if merge_key(p.address) in own:
            continue
        if p.role == "from":
            people.see("received", p.address, p.name, when, mailbox, bulk=bulk, auto=auto)
        elif p.role in ("to", "cc"):
            people.see("copied", p.address, p.name, when, mailbox, bulk=bulk, auto=auto)
    for p in item.reply_to:  # whom the sender wants the answers to go to
        if merge_key(p.address) not in own:
            people.see("copied", p.address, p.name, when, mailbox, bulk=bulk, auto=auto)


@dataclass(frozen=True)
class MailDigest:
    """What a batch of a mailbox's mail teaches, made where the batch is read (a parse pool
    worker: :class:`~syncd.connectors.base.Digests`): the people it shows (mail before
    ``since`` left out) and how many messages it held."""

    mailbox: str
    own: frozenset[str]  # the merge keys of the user's addresses
    since: datetime | None = None
    # it reads the header alone (From, To, Cc, Bcc, Reply-To, Date, Received, the bulk and
    # auto-reply fields): IMAP fetches nothing else (syncd.connectors.imap.fetch)
    headers_only: ClassVar[bool] = True

    def __call__(self, items: list[MailItem]) -> tuple[People, int]:
        people = People()
        for item in items:
            if self.since is None or item.sent_at >= self.since:
                see_mail(people, item, self.mailbox, self.own)
        return people, len(items)


def see_card(people: People, card: Card, mailbox: str, own: Collection[str]) -> None:
    """Add one address-book card: someone the user saved, under all of its addresses (but
    the user's own); the card's name is the user's own word for them."""
    addresses = [a for a in card.addresses if merge_key(a) and merge_key(a) not in own]
    person = people.see_card(addresses, card.name, mailbox)
    if person is not None:
        both = (card.first_name, card.last_name) if card.first_name and card.last_name else None
        person.name_from_book(card.name, both)


def see_meeting(people: People, item: MeetingItem, mailbox: str, own: Collection[str]) -> None:
    """Add one meeting of ``mailbox``: everyone on it but the user met them."""
    if item.cancelled:
        return
    for p in item.participants:
        if merge_key(p.address) not in own:
            people.see("meeting", p.address, p.name, item.start, mailbox)
