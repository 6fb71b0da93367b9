"""Which harvested people become CRM contacts, and why not: one :class:`Verdict` a person,
with the account they join. Pure: the people, the policy and what the CRM already holds in;
the same verdicts for ``--dry-run`` (the report) and the real run (applied).

The rules, in order (the first that applies is the reason in the report):

=====================  ==================================================================
``internal``           an address of the company (``company.domains``) or of a user
``role address``       noreply@, mailer-daemon@, notifications@, bounces+tag@ ...
``excluded``           ``exclusions.addresses`` / ``exclusions.domains``
``bulk only``          seen only as the sender of received bulk mail (List-Id, Precedence)
``auto-reply only``    seen only as the sender of received auto-replies
``one-way``            with ``--two-way-only``: no conversation both ways (nor saved)
``one-off stranger``   never written to, met nor saved, and fewer than ``--min-messages``
=====================  ==================================================================

A person already on a CRM contact is ``update`` (their counts are added; their name and
account change only with ``--update-names``); everyone else is ``import``. Accounts: a
person at a company domain joins that domain's account; a missing one is created with
``--accounts create``, left out with ``existing``, and ``never`` attaches no one. Free-mail
people are imported without an account.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from syncd.harvest.names import best_name, split_name
from syncd.harvest.people import Person, is_role_address
from syncd.matching.addresses import domain_of, is_free_mail
from syncd.matching.forgotten import is_forgotten

AccountPolicy = Literal["create", "existing", "never"]
Action = Literal["import", "update", "skip"]
SkipReason = Literal[
    "internal",
    "role address",
    "excluded",
    "bulk only",
    "auto-reply only",
    "one-way",
    "one-off stranger",
]


@dataclass(frozen=True)
class Policy:
    min_messages: int = 2
    two_way_only: bool = False
    accounts: AccountPolicy = "create"
    update_names: bool = False


@dataclass(frozen=True)
class Crm:
    """What the CRM holds that the verdicts depend on (read once, before deciding)."""

    internal_domains: frozenset[str]
    user_addresses: frozenset[str]
    excluded_addresses: frozenset[str]
    excluded_domains: frozenset[str]
    contact_by_address: Mapping[str, int]  # normalised address -> contact id
    account_by_domain: Mapping[str, int]  # domain -> account id
    # digests of the addresses and domains an admin had forgotten (syncd forget)
    forgotten: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Verdict:
    person: Person
    action: Action
    reason: SkipReason | None  # why a person is skipped
    name: str
    first_last: tuple[str, str] | None
    domain: str | None  # the account's domain: the one they join or the one created
    account_id: int | None  # an existing account, else None
    new_account: bool  # the import creates the account of ``domain``
    contact_id: int | None  # an existing contact (``update``)


def skip_reason(person: Person, policy: Policy, crm: Crm) -> SkipReason | None:
    domain = person.domain
    spellings = set(person.spellings) | {person.key}
    if domain in crm.internal_domains or spellings & crm.user_addresses:
        return "internal"
    if any(is_role_address(a) for a in spellings):
        return "role address"
    if spellings & crm.excluded_addresses or _under(domain, crm.excluded_domains):
        return "excluded"
    if any(is_forgotten(a, crm.forgotten) for a in spellings):
        return "excluded"  # forgotten (syncd forget): as if on the exclusion lists
    if person.messages == 0 and not person.known:
        return "bulk only" if person.bulk >= person.auto else "auto-reply only"
    if policy.two_way_only and not (person.two_way or person.saved):
        return "one-way"
    if not person.known and person.messages < policy.min_messages:
        return "one-off stranger"
    return None


def _under(domain: str, domains: frozenset[str]) -> bool:
    """``domain`` or a parent of it is in ``domains`` (``eu.acme.test`` under ``acme.test``)."""
    parts = domain.split(".")
    return any(".".join(parts[i:]) in domains for i in range(len(parts) - 1))


def verdict(person: Person, policy: Policy, crm: Crm) -> Verdict:
    name = person.book_name or best_name(person.names, person.address)
    existing = next(
        (crm.contact_by_address[a] for a in person.spellings if a in crm.contact_by_address),
        crm.contact_by_address.get(person.key),
    )
    reason = None if existing is not None else skip_reason(person, policy, crm)
    domain = domain_of(person.address)
    account_id = crm.account_by_domain.get(domain)
    company = not reason and not is_free_mail(domain) and policy.accounts != "never"
    new_account = company and account_id is None and policy.accounts == "create"
    joins = company and (account_id is not None or new_account)
    action: Action = "skip" if reason else ("update" if existing is not None else "import")
    first_last = person.book_first_last or (split_name(name) if name else None)
    if first_last is not None and not person.book_name:  # "SMITH, JOHN" -> "John Smith"
        name = f"{first_last[0]} {first_last[1]}"
    return Verdict(
        person=person,
        action=action,
        reason=reason,
        name=name or person.address,
        first_last=first_last,
        domain=domain if joins else None,
        account_id=account_id if joins else None,
        new_account=new_account and action == "import",
        contact_id=existing,
    )


def rank(person: Person) -> tuple[int, float, int, str]:
    """Two-way conversations first, then the most recent, then the most messages; the key
    last, so equal people always come in one order."""
    last = person.last_seen.timestamp() if person.last_seen else 0.0
    return (-int(person.two_way), -last, -(person.messages + person.meetings), person.key)


_ORDER = {"import": 0, "update": 1, "skip": 2}


def decide(people: Iterable[Person], policy: Policy, crm: Crm) -> list[Verdict]:
    """Every person's verdict: those imported first, then those already contacts, then
    those skipped, each ranked."""
    verdicts = [verdict(p, policy, crm) for p in people]
    return sorted(verdicts, key=lambda v: (_ORDER[v.action], rank(v.person)))
