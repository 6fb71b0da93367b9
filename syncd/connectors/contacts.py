"""Address books: what every kind's contact source yields (:class:`Card`, :class:`CardBatch`,
:class:`AddressBook`), and vCards read with ``vobject`` (CardDAV, files).

A card is one entry of the user's address book: the people the user saved are real people
(the historical import weighs them like people the user wrote to). A source reads its book
incrementally with the provider's sync token (Google People, Graph contacts delta, CardDAV
sync-collection); a token the provider no longer takes is :class:`CursorExpired` and the
book is read again whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from syncd.items import Cursor
from syncd.matching.addresses import normalize_address


@dataclass(frozen=True)
class Card:
    provider_id: str
    name: str  # as the book shows it (FN, displayName)
    addresses: tuple[str, ...]  # normalised
    first_name: str = ""  # only where the book has them apart (N, givenName / surname)
    last_name: str = ""
    organization: str = ""


@dataclass(frozen=True)
class CardBatch:
    cards: tuple[Card, ...]
    cursor: Cursor
    removed: tuple[str, ...] = ()  # provider ids gone from the book


class AddressBook(Protocol):
    name: str

    def changes(self, cursor: Cursor | None) -> Iterator[CardBatch]: ...


@runtime_checkable
class HasAddressBooks(Protocol):
    """A connector whose provider keeps the user's address books."""

    def address_books(self) -> list[AddressBook]: ...


def card(
    provider_id: str,
    name: str,
    addresses: list[str],
    first: str = "",
    last: str = "",
    organization: str = "",
) -> Card | None:
    """A card of its cleaned parts; None when it holds no usable address."""
    found = tuple(dict.fromkeys(a for a in (normalize_address(x) for x in addresses) if a))
    if not found:
        return None
    return Card(
        provider_id,
        " ".join(name.split()),
        found,
        first.strip(),
        last.strip(),
        organization.strip(),
    )


def cards_from_vcard(text: str, provider_id: str) -> list[Card]:
    """The cards of a vCard resource (one or more VCARDs; vobject reads 2.1, 3.0 and 4.0).
    A resource vobject cannot read gives no card."""
    import vobject  # a runtime dependency; loaded only where vCards are read

    found: list[Card] = []
    try:
        components = list(vobject.readComponents(text, ignoreUnreadable=True))
    except Exception:  # a malformed card: nothing to learn from it
        return []
    for n, component in enumerate(components):
        if component.name != "VCARD":
            continue
        one = card(
            provider_id if n == 0 else f"{provider_id}#{n}",
            _value(component, "fn"),
            [str(e.value) for e in component.contents.get("email", [])],
            *_n(component),
            _org(component),
        )
        if one is not None:
            found.append(one)
    return found


def _value(component: Any, name: str) -> str:
    line = component.contents.get(name)
    return str(line[0].value) if line else ""


def _n(component: Any) -> tuple[str, str]:
    """(given, family) from N, when it has them."""
    line = component.contents.get("n")
    if not line:
        return "", ""
    value = line[0].value
    given = getattr(value, "given", "")
    family = getattr(value, "family", "")
    return (
        " ".join(given) if isinstance(given, list) else str(given or ""),
        " ".join(family) if isinstance(family, list) else str(family or ""),
    )


def _org(component: Any) -> str:
    line = component.contents.get("org")
    if not line:
        return ""
    value = line[0].value
    return str(value[0]) if isinstance(value, list) and value else str(value or "")
