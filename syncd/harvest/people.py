"""The people a mailbox knows, merged: what the historical import (``syncd import contacts``)
learns from each message and meeting, before anything is decided. Pure: no database.

One person is one :func:`merge_key`: the normalised address (case, IDNA), and for Gmail's
own domains also without dots and ``+tags`` (Gmail delivers ``j.o.hn+x@gmail.com`` to
``john@gmail.com``; no other provider promises that, so nowhere else is it folded). Every
spelling seen is kept: each becomes an address of the contact, so the matcher finds the
person under any of them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Set
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from syncd.matching.addresses import domain_of, is_free_mail, normalize_address
from syncd.matching.forgotten import is_forgotten

Seen = Literal["sent", "received", "copied", "meeting", "saved"]
# sent: the mailbox's user wrote to them; received: they wrote to the user; copied: on a
# message the user received (To/Cc beside the user); meeting: they attend a meeting with the
# user; saved: they are in the user's address book

GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})

# local parts (before any +tag) of role and machine addresses: nobody to sell to
_ROLE_LOCALS = frozenset(
    {
        "noreply",
        "no-reply",
        "no_reply",
        "donotreply",
        "do-not-reply",
        "do_not_reply",
        "mailer-daemon",
        "mailerdaemon",
        "postmaster",
        "hostmaster",
        "webmaster",
        "abuse",
        "notifications",
        "notification",
        "notify",
        "bounce",
        "bounces",
        "daemon",
        "root",
        "calendar-notification",
        "calendar-server",
    }
)
_ROLE_PREFIX = re.compile(r"^(no-?reply|do-?not-?reply|bounces?|mailer-daemon)[-_.=]", re.I)


def merge_key(address: str) -> str:
    """The key two spellings of one person share ('' when it is no address)."""
    norm = normalize_address(address)
    if not norm:
        return ""
    local, _, domain = norm.rpartition("@")
    if domain in GMAIL_DOMAINS:
        return f"{local.partition('+')[0].replace('.', '')}@gmail.com"
    return norm


def is_role_address(address: str) -> bool:
    """noreply@, mailer-daemon@, bounces+123@, notifications@, no-reply-abc@ ...: a machine
    or a role, never a person (``+tag`` variants included)."""
    local = normalize_address(address).rpartition("@")[0].partition("+")[0]
    return local in _ROLE_LOCALS or bool(_ROLE_PREFIX.match(local))


@dataclass
class Person:
    """What the mailboxes know of one person (one merge key)."""

    key: str
    spellings: Counter[str] = field(default_factory=Counter)
    names: Counter[str] = field(default_factory=Counter)
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    sent: int = 0  # messages the users wrote to them
    received: int = 0  # messages they wrote to the users (not bulk, not auto-replies)
    copied: int = 0  # messages the users received with them beside (To/Cc)
    meetings: int = 0
    bulk: int = 0  # received bulk mail (List-Id, List-Unsubscribe, Precedence) from them
    auto: int = 0  # received auto-replies from them
    mailboxes: set[str] = field(default_factory=set)
    saved: int = 0  # address-book cards that hold them
    aliases: set[str] = field(default_factory=set)  # other keys of theirs (one card had both)
    # the name an address book gives them (the user's own words: it wins over display names)
    book_name: str = ""
    book_first_last: tuple[str, str] | None = None

    def name_from_book(self, name: str, first_last: tuple[str, str] | None) -> None:
        """An address book's name for them: of two books' names, the one that sorts first,
        so the name never depends on which card was read first."""
        if name and (
            not self.book_name
            or (name, first_last or ()) < (self.book_name, self.book_first_last or ())
        ):
            self.book_name, self.book_first_last = name, first_last

    @property
    def domain(self) -> str:
        return domain_of(self.key)

    @property
    def address(self) -> str:
        """The spelling seen most often; on a tie a company address before a free-mail one
        (it names the account), then the smallest: never the one read first (the contact's
        address and account must not depend on the order of the mail)."""
        if not self.spellings:
            return self.key
        return min(
            self.spellings.items(),
            key=lambda kv: (-kv[1], is_free_mail(domain_of(kv[0])), kv[0]),
        )[0]

    @property
    def two_way(self) -> bool:
        """A conversation both ways: the users wrote to them, and they wrote back or met."""
        return self.sent > 0 and (self.received > 0 or self.meetings > 0)

    @property
    def known(self) -> bool:
        """Someone the user knows for sure: wrote to, met, or saved in an address book."""
        return self.sent > 0 or self.meetings > 0 or self.saved > 0

    @property
    def messages(self) -> int:
        """Messages that show a person (bulk mail and auto-replies do not)."""
        return self.sent + self.received + self.copied

    def add(
        self,
        seen: Seen,
        address: str,
        name: str,
        when: datetime | None,
        mailbox: str,
        *,
        bulk: bool = False,
        auto: bool = False,
    ) -> None:
        self.spellings[normalize_address(address)] += 1
        if name:
            self.names[name] += 1
        if when is not None:  # a card has no date
            self.first_seen = when if self.first_seen is None else min(self.first_seen, when)
            self.last_seen = when if self.last_seen is None else max(self.last_seen, when)
        self.mailboxes.add(mailbox)
        if seen == "received" and bulk:
            self.bulk += 1
        elif seen == "received" and auto:
            self.auto += 1
        elif seen in ("received", "copied") and (bulk or auto):
            pass  # beside the user on bulk mail or an auto-reply: shows nothing
        elif seen == "sent":
            self.sent += 1
        elif seen == "received":
            self.received += 1
        elif seen == "copied":
            self.copied += 1
        elif seen == "saved":
            self.saved += 1
        else:
            self.meetings += 1

    def merge(self, other: Person) -> None:
        """Add what another table learnt of the same person (another mailbox, a resumed
        harvest)."""
        self.spellings.update(other.spellings)
        self.names.update(other.names)
        for when in (other.first_seen, other.last_seen):
            if when is not None:
                self.first_seen = when if self.first_seen is None else min(self.first_seen, when)
                self.last_seen = when if self.last_seen is None else max(self.last_seen, when)
        self.sent += other.sent
        self.received += other.received
        self.copied += other.copied
        self.meetings += other.meetings
        self.bulk += other.bulk
        self.auto += other.auto
        self.saved += other.saved
        self.mailboxes |= other.mailboxes
        self.aliases |= other.aliases | ({other.key} - {self.key})
        self.name_from_book(other.book_name, other.book_first_last)


class People:
    """The candidate table: one :class:`Person` per merge key. Its size grows with the
    people known, never with the messages read."""

    def __init__(self) -> None:
        self.by_key: dict[str, Person] = {}

    def see(
        self,
        seen: Seen,
        address: str,
        name: str,
        when: datetime | None,
        mailbox: str,
        *,
        bulk: bool = False,
        auto: bool = False,
    ) -> None:
        key = merge_key(address)
        if not key:
            return
        person = self.by_key.get(key)
        if person is None:
            person = self.by_key[key] = Person(key)
        person.add(seen, address, name, when, mailbox, bulk=bulk, auto=auto)

    def see_card(self, addresses: list[str], name: str, mailbox: str) -> Person | None:
        """A card of the user's address book: its addresses are one person, kept under the
        first one's key (the others are joined to it by :meth:`join_linked`)."""
        keys = [k for k in (merge_key(a) for a in addresses) if k]
        if not keys:
            return None
        person = self.by_key.get(keys[0])
        if person is None:
            person = self.by_key[keys[0]] = Person(keys[0])
        person.add("saved", addresses[0], name, None, mailbox)
        for address in addresses[1:]:
            person.spellings[normalize_address(address)] += 1
        return person

    def join_linked(self) -> None:
        """One person for the keys cards put together, however long the chain (card one
        holds a and b, card two b and c: one person): a person whose spellings hold another
        person's key is joined with them, and the people so joined become the one of the
        smallest key (their counts and spellings add up), whatever order they were read in."""
        parent = {key: key for key in self.by_key}

        def root(key: str) -> str:
            while parent[key] != key:
                parent[key] = parent[parent[key]]
                key = parent[key]
            return key

        for key, person in self.by_key.items():
            for spelling in person.spellings:
                other = merge_key(spelling)
                if other in parent:
                    a, b = root(key), root(other)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
        groups: dict[str, list[str]] = {}
        for key in sorted(self.by_key):
            groups.setdefault(root(key), []).append(key)
        for first, *others in groups.values():
            for key in others:
                self.by_key[first].merge(self.by_key.pop(key))

    def drop_forgotten(self, digests: Set[str]) -> None:
        """Leave out everyone an admin had forgotten (``syncd forget``): under any of their
        spellings, they are never stored, counted or imported."""
        if not digests:
            return
        for key in [
            k
            for k, p in self.by_key.items()
            if any(is_forgotten(a, digests) for a in (k, *p.spellings))
        ]:
            del self.by_key[key]

    def merge(self, other: People) -> None:
        for key, person in other.by_key.items():
            mine = self.by_key.get(key)
            if mine is None:
                self.by_key[key] = person
            else:
                mine.merge(person)

    def __len__(self) -> int:
        return len(self.by_key)

    def __iter__(self) -> Iterator[Person]:
        return iter(self.by_key.values())
