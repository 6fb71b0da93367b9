"""Benchmark: matching quality on a labelled synthetic company.

Generates a company (50 users, 2,000 accounts, 20,000 contacts, 1,000 open and closed
deals, several per account, contact roles on some) and 10,000 conversations whose true
deal, accounts and contacts are known, delivers them into one Maildir per user in a
SHUFFLED order (providers deliver in any order), in a few rounds with a sync pass of every
mailbox after each, and reads back from the CRM database what syncd linked. Prints the
precision and recall of the deal, account and contact links, the share of messages left
unlinked as ambiguous, the absolute counts, the time taken, the peak RSS, and the deal
errors per scenario (with an example message for each kind of error).

Precision = correct links / links made; recall = correct links / links the truth has (for
the deal: the messages whose truth has one). An activity is matched to its truth by its key
(``mid:<Message-ID>``, or ``ical:<UID>`` for a meeting). Aim: deal precision >= 0.99 with
recall >= 0.95. The peak RSS is the whole process's (the generated mail is held too).

The company. Accounts have one domain, some two; some are subsidiaries that share their
parent's domain (their own is a subdomain of it, their people write from the parent's).
Contacts have one address, some an alias, some are on free mail (the CRM still names their
account), some are at two accounts (an address at each; the CRM names one), and some
changed company (the CRM names the new account, has both addresses, and still lists the
person's role in the old account's deal, as nobody removes it). Closed deals closed more
than 200 days ago; people moved between 400 and 200 days ago; untagged new conversations
are from the last 180 days, so what is open now was open then.

The truth: what a careful human reading the conversation and the CRM would log.

- A person speaks for an account: a contact for the CRM's account, except a contact at two
  accounts writing from the other account's address (that account), and a person who
  changed company, before the move (the old account). Someone unknown speaks for the
  account owning their domain (or a parent domain), nobody on free mail. Colleagues are
  users, never contacts. The account links are the accounts spoken for; the contact links
  the CRM contacts among the participants (by address).
- A message or meeting that names a deal by tag (``[OPP-n]`` in the subject, body or
  meeting description) belongs to it, open or closed.
- Every message of a conversation with a tagged message belongs to the tagged deal: a
  reply whose subject lost the tag, a forward (also one that carries neither the tag nor
  the References: the forwarded text shows the conversation), and a late reply in a
  closed deal's old thread (it stays with it).
- A conversation without a tag belongs to what its first message's people tell: the one
  open deal in which one of them has a role, counted only in a deal of the account that
  person speaks for (a role left over in a former company's deal does not count); else
  the one open deal of the accounts they speak for. Two or more candidates (two open
  deals at one account and nothing else to tell, or roles in two deals) is AMBIGUOUS: the
  truth is no deal, and a link to either counts as a wrong link. Only closed deals, or
  none, is no deal too. A meeting without a tag is its own conversation, by its attendees.

Scenarios (each message counts under one): tagged, untagged reply, forward (the ``Fwd:``
style a user sends onwards, Gmail's with In-Reply-To/References, Outlook's ``FW:`` without),
meeting (iCalendar invitations by mail), two deals at one account, stale closed deal,
changed company, untagged thread (one deal, or none, to tell) and contact at two accounts.

    .venv/bin/python bench/matching_quality.py                   # 10,000 conversations
    .venv/bin/python bench/matching_quality.py --threads 1000     # quicker
    .venv/bin/python bench/matching_quality.py --scale 0.1 --json # a tenth of everything
    .venv/bin/python bench/matching_quality.py --database-url postgresql+psycopg://...
    .venv/bin/python bench/matching_quality.py --order-seed 7     # same mail, another order
    .venv/bin/python bench/matching_quality.py --opportunity single-open-only

The CRM is inserted in bulk (``--csv``: through ``syncd crm load`` instead, the same rows,
slower: about 50 s for the 20,000 contacts).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phases import peak_rss_mb  # noqa: E402

USERS, ACCOUNTS, CONTACTS, DEALS, THREADS = 50, 2_000, 20_000, 1_000, 10_000
COMPANY = "northwind-sales.test"
FREE_MAIL = ("gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "gmx.de")
ROLES = ("Decision maker", "Champion", "Technical buyer", "Economic buyer")
FIRST = "ana ben carla dan eva farid gia hugo ines jon kira liam maya nils olga pia ravi sara tom"
LAST = "ruiz okafor diaz wu novak haddad rossi berg costa lind moreau sato kova ito brandt"
WORDS = "acme globex initech umbrella hooli stark wayne tyrell cyberdyne soylent wonka oscorp"
TOPICS = (
    "Proposal",
    "Pricing question",
    "Contract draft",
    "Security review",
    "Renewal terms",
    "Pilot scope",
    "Onboarding plan",
    "Next steps",
    "Licence count",
    "Technical questions",
)
SENTENCES = (
    "Thanks for the call today, here is a summary of what we agreed.",
    "Could you send the updated figures before Friday?",
    "Our legal team has a few comments on the draft.",
    "We would like to include two more teams in the rollout.",
    "Please find the revised plan attached.",
    "Let me check with procurement and come back to you.",
)
# the deals of an account that has some ("o" open, "c" closed) -> weight
PATTERNS = {"o": 25, "oc": 25, "oo": 20, "ooc": 7, "ooo": 5, "cc": 18}
# scenario -> share of the conversations
MIX = {
    "tagged": 0.24,
    "untagged reply": 0.12,
    "forward": 0.08,
    "meeting": 0.12,
    "two deals at one account": 0.12,
    "stale closed deal": 0.08,
    "changed company": 0.06,
    "untagged thread": 0.14,
    "contact at two accounts": 0.04,
}
SCENARIOS = [*MIX]
DAY = timedelta(days=1)
ROUNDS = 3  # deliveries are written and synced in this many rounds
PRECISION_AIM, RECALL_AIM = 0.99, 0.95

Addr = tuple[str, str]  # (address, display name)


# --- the company -----------------------------------------------------------------------------


@dataclass
class Account:
    idx: int
    name: str
    domains: list[str]
    owner: int
    mail_domains: list[str]  # where its people's addresses are (a parent's shared domain)

    @property
    def ext(self) -> str:
        return f"ACC-{self.idx + 1}"


@dataclass
class Person:
    idx: int
    first: str
    last: str
    addresses: list[str]
    account: int  # as the CRM has it
    kind: str = "plain"  # plain, free (free-mail address), two (two accounts), moved
    other: int | None = None  # two: the other account; moved: the former one
    moved_at: datetime | None = None

    @property
    def name(self) -> str:
        return f"{self.first.title()} {self.last.title()}"


@dataclass
class Deal:
    idx: int
    account: int
    owner: int
    status: str  # open, won, lost
    closed_at: datetime | None
    roles: dict[int, str] = field(default_factory=dict)  # person -> role

    @property
    def ext(self) -> str:
        return f"OPP-{self.idx + 1}"


class Company:
    """The CRM as loaded, and what a careful human knows of it (who speaks for whom)."""

    def __init__(self, rng: random.Random, scale: float, now: datetime) -> None:
        self.rng, self.now = rng, now
        self.start = now - 540 * DAY
        n_users = max(2, round(USERS * scale))
        self.users: list[Addr] = [(f"rep{u:02d}@{COMPANY}", f"Rep {u:02d}") for u in range(n_users)]
        self._accounts(max(10, round(ACCOUNTS * scale)))
        self._contacts(max(40, round(CONTACTS * scale)), max(10, round(DEALS * scale)))
        self.by_address = {a: p.idx for p in self.people for a in p.addresses}
        self.domain_owner = {d: a.idx for a in self.accounts for d in a.domains}

    def _accounts(self, count: int) -> None:
        rng, words = self.rng, WORDS.split()
        self.accounts: list[Account] = []
        for a in range(count):
            domains = [f"{words[a % len(words)]}{a}.test"]
            mail = list(domains)
            if a > 20 and rng.random() < 0.05:  # a subsidiary: its parent's domain is shared
                parent = self.accounts[rng.randrange(a // 2)]
                domains = [f"{rng.choice(['us', 'eu', 'apac'])}{a}.{parent.domains[0]}"]
                mail = [parent.domains[0], parent.domains[0], domains[0]]
            elif rng.random() < 0.12:  # several domains
                domains.append(f"{words[a % len(words)]}{a}-group.test")
                mail = list(domains)
            name = f"{words[a % len(words)].title()} {a}"
            self.accounts.append(Account(a, name, domains, rng.randrange(len(self.users)), mail))

    def _contacts(self, count: int, deals: int) -> None:
        rng = self.rng
        order = rng.sample(range(len(self.accounts)), len(self.accounts))
        patterns: dict[int, str] = {}
        made = 0
        for a in order:
            if made >= deals:
                break
            kinds = rng.choices(list(PATTERNS), list(PATTERNS.values()))[0]
            patterns[a] = kinds
            made += len(kinds)
        firsts, lasts = FIRST.split(), LAST.split()
        homes = [a.idx for a in self.accounts for _ in range(2)]
        weighted = [a.idx for a in self.accounts for _ in range(3 if a.idx in patterns else 1)]
        homes += rng.choices(weighted, k=max(0, count - len(homes)))
        self.people: list[Person] = []
        for c, a in enumerate(homes[:count]):
            first, last = rng.choice(firsts), rng.choice(lasts)
            local = f"{first}.{last}{c}"
            p = Person(c, first, last, [], a)
            if rng.random() < 0.07:
                p.kind, p.addresses = "free", [f"{local}@{rng.choice(FREE_MAIL)}"]
            else:
                p.addresses = [f"{local}@{rng.choice(self.accounts[a].mail_domains)}"]
            if rng.random() < 0.1:  # an alias
                p.addresses.append(f"{first[0]}{last}{c}@{self.accounts[a].mail_domains[-1]}")
            self.people.append(p)
        self._deals(patterns)
        self._special(max(2, count // 100))

    def _deals(self, patterns: dict[int, str]) -> None:
        rng = self.rng
        people_of = defaultdict(list)
        for p in self.people:
            people_of[p.account].append(p.idx)
        self.deals: list[Deal] = []
        for a, kinds in patterns.items():
            owner = self.accounts[a].owner
            for k in kinds:
                boss = owner if rng.random() < 0.8 else rng.randrange(len(self.users))
                d = Deal(len(self.deals), a, boss, "open", None)
                if k == "c":
                    d.status = rng.choice(["won", "lost"])
                    d.closed_at = self.start + rng.uniform(90, 340) * DAY
                if rng.random() < 0.7:
                    for person in rng.sample(
                        people_of[a], min(len(people_of[a]), 1 + rng.randrange(3))
                    ):
                        d.roles[person] = rng.choice(ROLES)
                self.deals.append(d)
        self._index_deals()

    def _index_deals(self) -> None:
        self.deals_of: dict[int, list[int]] = defaultdict(list)
        self.open_of: dict[int, list[int]] = defaultdict(list)
        self.roles_of: dict[int, list[int]] = defaultdict(list)
        for d in self.deals:
            self.deals_of[d.account].append(d.idx)
            if d.status == "open":
                self.open_of[d.account].append(d.idx)
            for person in d.roles:
                self.roles_of[person].append(d.idx)

    def _special(self, each: int) -> None:
        """People who changed company (half of them with a role in an open deal, which
        stays), and people at two accounts."""
        rng = self.rng
        with_open = [a for a, deals in self.open_of.items() if deals]
        role_holders = [
            p
            for p in self.people
            if p.kind == "plain"
            and any(self.deals[d].status == "open" for d in self.roles_of[p.idx])
        ]
        plain = [p for p in self.people if p.kind == "plain" and len(p.addresses) == 1]
        chosen = rng.sample(role_holders, min(len(role_holders), each // 2))
        taken = {p.idx for p in chosen}
        chosen += [p for p in rng.sample(plain, min(len(plain), each)) if p.idx not in taken]
        for p in chosen[:each]:
            new = rng.choice([a for a in with_open if a != p.account])
            p.kind, p.other, p.account = "moved", p.account, new
            p.moved_at = self.now - rng.uniform(200, 400) * DAY
            local = f"{p.first}.{p.last}{p.idx}"
            p.addresses = [f"{local}@{self.accounts[new].domains[0]}", p.addresses[0]]
            if rng.random() < 0.3:  # the CRM has the role at the new company too
                self.deals[rng.choice(self.open_of[new])].roles[p.idx] = rng.choice(ROLES)
        taken = {p.idx for p in self.people if p.kind == "moved"}
        plain = [p for p in plain if p.idx not in taken]
        for p in rng.sample(plain, min(len(plain), each)):
            other = rng.choice([a for a in with_open if a != p.account])
            p.kind, p.other = "two", other
            p.addresses.append(f"{p.first}.{p.last}{p.idx}@{self.accounts[other].domains[0]}")
        self._index_deals()

    # --- what a careful human knows --------------------------------------------------------

    def speaks_for(self, address: str, when: datetime) -> tuple[int | None, int | None]:
        """(contact, account) of a participant, as a human would say at that time."""
        c = self.by_address.get(address)
        if c is not None:
            p = self.people[c]
            if p.kind == "two" and address == p.addresses[-1]:
                return c, p.other
            if p.kind == "moved" and p.moved_at is not None and when < p.moved_at:
                return c, p.other
            return c, p.account
        domain = address.rsplit("@", 1)[1]
        labels = domain.split(".")
        for i in range(len(labels) - 1):
            owner = self.domain_owner.get(".".join(labels[i:]))
            if owner is not None:
                return None, owner
        return None, None

    def weak_truth(self, addresses: Iterable[str], when: datetime) -> tuple[int | None, str]:
        """The deal an untagged conversation's first message tells, and why (see the
        module's docstring)."""
        speakers = [self.speaks_for(a, when) for a in addresses]
        accounts = {acc for _, acc in speakers if acc is not None}
        roles = sorted(
            {
                d
                for c, acc in speakers
                if c is not None
                for d in self.roles_of[c]
                if self.deals[d].status == "open" and self.deals[d].account == acc
            }
        )
        if len(roles) == 1:
            return roles[0], "contact role"
        if roles:
            return None, "ambiguous: roles in " + self.names(roles)
        open_ = sorted(d for a in accounts for d in self.open_of[a])
        if len(open_) == 1:
            return open_[0], "the account's only open deal"
        if open_:
            return None, "ambiguous: " + self.names(open_)
        if any(self.deals_of[a] for a in accounts):
            return None, "only closed deals"
        return None, "no deal"

    def names(self, deals: Iterable[int]) -> str:
        return ", ".join(self.deals[d].ext for d in deals)

    def person_addr(self, c: int, which: int = 0) -> Addr:
        return self.people[c].addresses[which], self.people[c].name

    # --- the CRM's rows ------------------------------------------------------------------------

    def rows(self) -> Iterable[tuple[str, dict[str, Any]]]:
        """(table, row) for the whole CRM, parents first, ids from the indexes (as
        ``syncd crm load`` would store the CSV files of :meth:`write_csv`)."""
        for u, (address, name) in enumerate(self.users):
            yield "users", {"id": u + 1, "email": address, "name": name}
        for a in self.accounts:
            yield "accounts", {"id": a.idx + 1, "name": a.name, "external_id": a.ext}
        for a in self.accounts:
            for domain in a.domains:
                yield "account_domains", {"domain": domain, "account_id": a.idx + 1}
        for p in self.people:
            row = {"id": p.idx + 1, "name": p.name, "account_id": p.account + 1}
            yield "contacts", {**row, "auto_created": False}
        for p in self.people:
            for address in p.addresses:
                yield "contact_addresses", {"address": address, "contact_id": p.idx + 1}
        for d in self.deals:
            yield (
                "opportunities",
                {
                    "id": d.idx + 1,
                    "external_id": d.ext,
                    "name": f"{self.accounts[d.account].name} deal {d.idx + 1}",
                    "account_id": d.account + 1,
                    "owner_id": d.owner + 1,
                    "stage": "Closed" if d.closed_at else "Proposal",
                    "status": d.status,
                    "close_date": (d.closed_at or self.now + 60 * DAY).date(),
                },
            )
        for d in self.deals:
            for c, role in d.roles.items():
                row = {"opportunity_id": d.idx + 1, "contact_id": c + 1, "role": role}
                yield "opportunity_contacts", row

    # --- the CSV files of `syncd crm load` ---------------------------------------------------

    def write_csv(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)

        def write(kind: str, header: list[str], rows: Iterable[list[str]]) -> None:
            with open(folder / f"{kind}.csv", "w", newline="", encoding="utf-8") as fh:
                out = csv.writer(fh)
                out.writerow(header)
                out.writerows(rows)

        write("users", ["email", "name"], ([a, n] for a, n in self.users))
        write(
            "accounts",
            ["name", "domains", "external_id"],
            ([a.name, ";".join(a.domains), a.ext] for a in self.accounts),
        )
        write(
            "contacts",
            ["emails", "name", "account"],
            (
                [";".join(p.addresses), p.name, self.accounts[p.account].domains[0]]
                for p in self.people
            ),
        )
        write(
            "opportunities",
            [
                "external_id",
                "name",
                "account",
                "owner",
                "stage",
                "status",
                "close_date",
                "contacts",
            ],
            (
                [
                    d.ext,
                    f"{self.accounts[d.account].name} deal {d.idx + 1}",
                    self.accounts[d.account].domains[0],
                    self.users[d.owner][0],
                    "Closed" if d.closed_at else "Proposal",
                    d.status,
                    str((d.closed_at or self.now + 60 * DAY).date()),
                    ";".join(f"{self.people[c].addresses[0]}={r}" for c, r in d.roles.items()),
                ]
                for d in self.deals
            ),
        )


# --- the conversations ------------------------------------------------------------------------


@dataclass
class Mail:
    mid: str
    sender: Addr
    to: list[Addr]
    cc: list[Addr]
    subject: str
    when: datetime
    body: str
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    calendar: bytes | None = None


@dataclass
class Truth:
    """One activity as a careful human would log it."""

    key: str
    scenario: str
    variant: str
    subject: str
    deal: int | None
    why: str
    accounts: frozenset[int]
    contacts: frozenset[int]


class Conversations:
    """Generates the conversations: the mails, who receives a copy where, and the truth of
    every activity they make."""

    def __init__(self, company: Company, rng: random.Random) -> None:
        self.co, self.rng, self.now = company, rng, company.now
        self.mails: list[Mail] = []
        self.deliveries: list[tuple[int, bool, int]] = []  # (user, in Sent, mail)
        self.truths: dict[str, Truth] = {}
        self.made = 0  # mails and meetings made: their ids are unique
        co = company
        generic = defaultdict(list)
        for p in co.people:
            if p.kind in ("plain", "free"):
                generic[p.account].append(p.idx)
        self.generic: dict[int, list[int]] = generic
        self.open_deals = [d.idx for d in co.deals if d.status == "open"]
        self.closed_deals = [d.idx for d in co.deals if d.status != "open"]
        by_open = defaultdict(list)
        for a in co.deals_of:
            by_open[min(len(co.open_of[a]), 2)].append(a)
        self.two_open = [a for a in by_open[2] if generic[a]]
        self.closed_only = [a for a in by_open[0] if generic[a]]
        self.one_open = [a for a in by_open[1] if generic[a]]
        self.one_open_closed = [a for a in self.one_open if len(co.deals_of[a]) > 1]
        self.no_deals = [a.idx for a in co.accounts if a.idx not in co.deals_of and generic[a.idx]]
        self.moved = [p.idx for p in co.people if p.kind == "moved"]
        self.two = [p.idx for p in co.people if p.kind == "two"]
        self.make: dict[str, Callable[[int], None]] = {
            "tagged": self.tagged,
            "untagged reply": self.untagged_reply,
            "forward": self.forward,
            "meeting": self.meeting,
            "two deals at one account": self.two_deals,
            "stale closed deal": self.stale,
            "changed company": self.changed,
            "untagged thread": self.untagged,
            "contact at two accounts": self.two_accounts,
        }

    def generate(self, threads: int) -> None:
        for t, scenario in enumerate(self.rng.choices(SCENARIOS, list(MIX.values()), k=threads)):
            self.make[scenario](t)

    # --- building blocks --------------------------------------------------------------------

    def serial(self) -> int:
        self.made += 1
        return self.made

    def when(self, lo: datetime, hi: datetime) -> datetime:
        return lo + (hi - lo) * self.rng.random()

    def recent(self) -> datetime:
        return self.when(self.now - 180 * DAY, self.now - 15 * DAY)

    def deal_time(self, d: int) -> datetime:
        deal = self.co.deals[d]
        return self.when(self.co.start, (deal.closed_at or self.now) - 15 * DAY)

    def people_of(self, a: int, want: int = 1, prefer: Iterable[int] = ()) -> list[int]:
        pool = self.generic[a] or [p.idx for p in self.co.people if p.account == a]
        first = [c for c in prefer if c in pool]
        chosen = [self.rng.choice(first)] if first else []
        rest = [c for c in pool if c not in chosen]
        return chosen + self.rng.sample(rest, min(len(rest), want - len(chosen)))

    def others(self, a: int, main: list[Addr], t: int, contacts: bool = True) -> list[Addr]:
        """A second contact (``contacts``), someone unknown at the account's domain, or
        nobody more."""
        r = self.rng.random()
        if r < 0.15 and contacts:
            extra = [self.co.person_addr(c) for c in self.people_of(a, 3)]
            return [x for x in extra if x not in main][:1]
        if r < 0.25:
            return [(f"guest{t}@{self.co.accounts[a].mail_domains[-1]}", "Guest")]
        return []

    def add_truth(
        self,
        key: str,
        mail: Mail,
        scenario: str,
        variant: str,
        deal: int | None,
        why: str,
        ext: Iterable[str],
    ) -> None:
        speakers = [self.co.speaks_for(a, mail.when) for a in ext]
        self.truths.setdefault(
            key,
            Truth(
                key,
                scenario,
                variant,
                mail.subject,
                deal,
                why,
                frozenset(a for _, a in speakers if a is not None),
                frozenset(c for c, _ in speakers if c is not None),
            ),
        )

    def post(self, mail: Mail, users: list[int]) -> None:
        """Deliver a mail: into the Sent folder of its sender and the INBOX of every other
        user among its people."""
        i = len(self.mails)
        self.mails.append(mail)
        for u in users:
            self.deliveries.append((u, self.co.users[u][0] == mail.sender[0], i))

    def thread(
        self,
        t: int,
        user: int,
        ext: list[Addr],
        start: datetime,
        subjects: list[str],
        labels: list[tuple[str, str]],
        deal: int | None,
        why: str,
        user_first: bool | None = None,
        colleague: bool = True,
    ) -> list[Mail]:
        """A conversation of len(subjects) mails between a user (and maybe a colleague) and
        ``ext``, alternating; each mail's truth is ``deal`` for ``why``, under its label."""
        rng, co = self.rng, self.co
        me = co.users[user]
        users = [user]
        if colleague and rng.random() < 0.15:
            users.append((user + 1 + rng.randrange(len(co.users) - 1)) % len(co.users))
        cc_users = [co.users[u] for u in users[1:]]
        from_user = rng.random() < 0.5 if user_first is None else user_first
        mails: list[Mail] = []
        when = start
        for k, subject in enumerate(subjects):
            domain = (ext[0][0] if not from_user else me[0]).rsplit("@", 1)[1]
            mid = f"t{t}.{k}.{self.serial()}@{domain}"
            if from_user:
                sender, to, cc = me, ext[:1], ext[1:] + cc_users
            else:
                sender, to, cc = ext[0], [me], ext[1:] + cc_users
            body = f"Hello,\n{rng.choice(SENTENCES)}\n\n{sender[1]}"
            mail = Mail(mid, sender, to, cc, subject, when, body)
            if mails:
                prev = mails[-1]
                mail.in_reply_to = prev.mid
                mail.references = [*prev.references, prev.mid][-10:]
                quoted = "\n".join("> " + line for line in prev.body.splitlines())
                mail.body += (
                    f"\n\nOn {format_datetime(prev.when)}, {prev.sender[1]} wrote:\n{quoted}"
                )
            self.post(mail, users)
            self.add_truth(f"mid:{mid}", mail, *labels[k], deal, why, [a for a, _ in ext])
            mails.append(mail)
            from_user = not from_user
            when += timedelta(hours=rng.uniform(1, 48))
        return mails

    def tag(self, d: int, topic: str) -> str:
        n = self.co.deals[d].idx + 1
        style = self.rng.random()
        if style < 0.05:
            return f"{topic} [opp-{n}]"
        return f"[OPP-{n}] {topic}" if style < 0.3 else f"{topic} [OPP-{n}]"

    def deal_people(self, d: int) -> list[Addr]:
        deal = self.co.deals[d]
        roles = [c for c in deal.roles if self.co.people[c].kind in ("plain", "free")]
        prefer = roles if self.rng.random() < 0.6 else []
        return [self.co.person_addr(c) for c in self.people_of(deal.account, 1, prefer)]

    def pick_deal(self, closed_share: float) -> int:
        pool = self.closed_deals if self.rng.random() < closed_share else self.open_deals
        return self.rng.choice(pool or self.open_deals or self.closed_deals)

    # --- the scenarios ------------------------------------------------------------------------

    def tagged_thread(
        self, t: int, d: int, ext: list[Addr], n: int, label: tuple[str, str], start: datetime
    ) -> list[Mail]:
        """A conversation of ``n`` mails, each with the deal's tag in its subject."""
        subject = self.tag(d, self.rng.choice(TOPICS))
        subjects = [subject] + ["Re: " + subject] * (n - 1)
        owner = self.co.deals[d].owner
        return self.thread(t, owner, ext, start, subjects, [label] * n, d, "tag")

    def tagged(self, t: int) -> None:
        d = self.pick_deal(0.25)
        deal = self.co.deals[d]
        ext = self.deal_people(d)
        ext += self.others(deal.account, ext, t)
        status = "open deal" if deal.status == "open" else "closed deal (before it closed)"
        n = self.rng.choice([1, 1, 2, 2, 3, 4, 5])
        self.tagged_thread(t, d, ext, n, ("tagged", f"tagged, {status}"), self.deal_time(d))

    def _tagged_then_untagged(
        self, t: int, d: int, replies: int, variant: str
    ) -> tuple[list[Mail], list[Addr], int]:
        """A tagged first mail, then replies whose subject lost the tag."""
        deal = self.co.deals[d]
        ext = self.deal_people(d)
        ext += self.others(deal.account, ext, t)
        topic = self.rng.choice(TOPICS)
        subjects = [self.tag(d, topic)] + [f"Re: {topic}"] * replies
        labels = [("tagged", "first mail of an untagged-reply thread")]
        labels += [("untagged reply", variant)] * replies
        at = self.deal_time(d)
        mails = self.thread(t, deal.owner, ext, at, subjects, labels, d, "thread", user_first=True)
        return mails, ext, deal.owner

    def untagged_reply(self, t: int) -> None:
        two = [d for a in self.two_open for d in self.co.open_of[a]]
        r = self.rng.random()
        if r < 0.6 and two:
            d, variant = self.rng.choice(two), "reply without the tag, account with 2+ open deals"
        elif r < 0.9:
            d, variant = self.rng.choice(self.open_deals), "reply without the tag, any open deal"
        else:
            d, variant = (
                self.rng.choice(self.closed_deals or self.open_deals),
                "reply without the tag, closed deal",
            )
        self._tagged_then_untagged(t, d, self.rng.choice([1, 1, 2, 3]), variant)

    def forward(self, t: int) -> None:
        """A user forwards a mail of a deal's conversation to another contact of the account:
        Gmail style (In-Reply-To and References of the forwarded mail) or Outlook style
        (``FW:``, no References); the forwarded mail tagged, or an untagged reply."""
        rng, co = self.rng, self.co
        two = [d for a in self.two_open for d in co.open_of[a]]
        d = rng.choice(two) if two and rng.random() < 0.6 else rng.choice(self.open_deals)
        deal = co.deals[d]
        of_reply = rng.random() < 0.6
        mails, ext, user = self._tagged_then_untagged(
            t, d, 1 if of_reply else 0, "reply without the tag, forwarded later"
        )
        original = mails[-1]
        to = [co.person_addr(c) for c in self.people_of(deal.account, 4)]
        to = [a for a in to if a not in ext][:1] or ext[:1]
        gmail = rng.random() < 0.5
        when = original.when + timedelta(hours=rng.uniform(1, 72))
        names = ", ".join(f"{n} <{a}>" for a, n in original.to)
        if gmail:
            header = (
                f"---------- Forwarded message ---------\nFrom: {original.sender[1]} "
                f"<{original.sender[0]}>\nDate: {format_datetime(original.when)}\n"
                f"Subject: {original.subject}\nTo: {names}\n"
            )
        else:
            header = (
                f"________________________________\nFrom: {original.sender[1]} "
                f"<{original.sender[0]}>\nSent: {format_datetime(original.when)}\n"
                f"To: {names}\nSubject: {original.subject}\n"
            )
        me = co.users[user]
        mail = Mail(
            f"fwd{t}.{self.serial()}@{COMPANY}",
            me,
            to,
            [],
            ("Fwd: " if gmail else "FW: ") + original.subject,
            when,
            f"FYI, see below.\n\n{me[1]}\n\n{header}\n{original.body}",
        )
        if gmail:
            mail.in_reply_to = original.mid
            mail.references = [*original.references, original.mid]
        self.post(mail, [user])
        style = "Gmail style (References)" if gmail else "Outlook style (no References)"
        what = "an untagged reply" if of_reply else "the tagged mail"
        self.add_truth(
            f"mid:{mail.mid}",
            mail,
            "forward",
            f"{style} of {what}",
            d,
            "forwarded thread",
            [a for a, _ in to],
        )

    def meeting(self, t: int) -> None:
        """An invitation by mail (iCalendar REQUEST), sent by the user or by a contact, with
        the tag in its summary, in its description, or none; sometimes rescheduled."""
        from syncd.demo import event_ics

        rng, co = self.rng, self.co
        r = rng.random()
        if r < 0.4:
            d, where = self.pick_deal(0.15), "summary"
        elif r < 0.6:
            d, where = self.pick_deal(0.15), "description"
        else:
            d, where = rng.choice(self.open_deals), ""
        deal = co.deals[d]
        when = self.deal_time(d) if where else self.recent()
        attendees = [
            co.person_addr(c)
            for c in self.people_of(deal.account, 1 + rng.randrange(3), deal.roles)
        ]
        users = [deal.owner]
        if rng.random() < 0.3:
            users.append((deal.owner + 1) % len(co.users))
        topic = rng.choice(["Proposal review", "Kick-off", "QBR", "Demo", "Workshop"])
        summary = self.tag(d, topic) if where == "summary" else topic
        description = (
            f"Agenda for {self.tag(d, 'the deal')}" if where == "description" else "Agenda"
        )
        by_user = rng.random() < 0.7
        organizer = co.users[deal.owner] if by_user else attendees[0]
        invited = [a for a in [*attendees, *(co.users[u] for u in users)] if a != organizer]
        uid = f"mtg{t}.{self.serial()}@{organizer[0].rsplit('@', 1)[1]}"
        start = (when + rng.uniform(1, 7) * DAY).replace(minute=0, second=0, microsecond=0)
        if where:
            deal_true: int | None = d
            why = "tag"
        else:
            deal_true, why = co.weak_truth([a for a, _ in attendees], when)
        variant = f"tag in the {where}" if where else f"no tag ({why.split(':')[0]})"
        for k in range(2 if rng.random() < 0.15 else 1):
            ics = event_ics(uid, summary, start + k * DAY, 60, organizer, invited, "REQUEST")
            ics = ics.replace(b"SUMMARY:", f"DESCRIPTION:{description}\r\nSUMMARY:".encode(), 1)
            mail = Mail(
                f"inv{t}.{k}.{self.serial()}@{organizer[0].rsplit('@', 1)[1]}",
                organizer,
                list(invited),
                [],
                ("Updated invitation: " if k else "Invitation: ") + summary,
                when + k * DAY,
                f"{organizer[1]} invites you to {summary}.",
                calendar=ics,
            )
            self.post(mail, users)
            self.add_truth(
                f"ical:{uid}", mail, "meeting", variant, deal_true, why, [a for a, _ in attendees]
            )

    def _untagged(
        self,
        t: int,
        a: int,
        main: int,
        label: str,
        variant: str,
        which: int = 0,
    ) -> None:
        """A new untagged conversation with ``main`` (by address ``which``) at account ``a``;
        its truth is what its first mail's people tell."""
        co = self.co
        ext = [co.person_addr(main, which)]
        ext += self.others(a, ext, t, contacts=False) if co.people[main].kind != "two" else []
        when = self.recent()
        deal, why = co.weak_truth([x for x, _ in ext], when)
        n = self.rng.choice([1, 2, 2, 3])
        topic = self.rng.choice(TOPICS)
        subjects = [topic] + [f"Re: {topic}"] * (n - 1)
        owner = co.deals[deal].owner if deal is not None else co.accounts[a].owner
        self.thread(t, owner, ext, when, subjects, [(label, variant)] * n, deal, why)

    def two_deals(self, t: int) -> None:
        co, rng = self.co, self.rng
        if not self.two_open:
            return self.untagged(t)
        a = rng.choice(self.two_open)
        open_ = set(co.open_of[a])
        by_roles = defaultdict(list)
        for c in self.generic[a]:
            by_roles[min(2, len(open_.intersection(co.roles_of[c])))].append(c)
        r = rng.random()
        want = 1 if r < 0.5 else 0 if r < 0.85 else 2
        if not by_roles[want]:
            want = next(k for k in (1, 0, 2) if by_roles[k])
        variant = (
            "no role to tell",
            "contact with a role in one of them",
            "contact with roles in two of them",
        )[want]
        self._untagged(t, a, rng.choice(by_roles[want]), "two deals at one account", variant)

    def stale(self, t: int) -> None:
        co, rng = self.co, self.rng
        r = rng.random()
        if r < 0.5 and self.closed_deals:  # a late reply in a closed deal's old thread
            d = rng.choice(self.closed_deals)
            deal = co.deals[d]
            ext = self.deal_people(d)
            label = ("tagged", "tagged, closed deal (before it closed)")
            old = self.tagged_thread(t, d, ext, rng.choice([1, 2]), label, self.deal_time(d))
            assert deal.closed_at is not None
            late = self.when(deal.closed_at + 30 * DAY, self.now - 2 * DAY)
            keep = rng.random() < 0.5
            label = (
                "stale closed deal",
                "late reply in the old thread, " + ("tag kept" if keep else "tag dropped"),
            )
            late_subject = "Re: " + (old[0].subject if keep else rng.choice(TOPICS))
            mail = self.thread(
                t,
                deal.owner,
                ext,
                late,
                [late_subject],
                [label],
                d,
                "thread",
                user_first=False,
                colleague=False,
            )[0]
            mail.in_reply_to, mail.references = old[-1].mid, [m.mid for m in old]
        elif r < 0.75 and self.closed_only:  # new mail at an account with only closed deals
            a = rng.choice(self.closed_only)
            prefer = [c for d in co.deals_of[a] for c in co.deals[d].roles]
            main = self.people_of(a, 1, prefer)[0]
            self._untagged(
                t, a, main, "stale closed deal", "new mail, only closed deals at the account"
            )
        elif self.one_open_closed:  # a role in a closed deal; the account has one open deal
            a = rng.choice(self.one_open_closed)
            prefer = [
                c for d in co.deals_of[a] if co.deals[d].status != "open" for c in co.deals[d].roles
            ]
            main = self.people_of(a, 1, prefer)[0]
            self._untagged(
                t, a, main, "stale closed deal", "new mail, a closed deal and one open deal"
            )
        else:
            self.untagged(t)

    def changed(self, t: int) -> None:
        co, rng = self.co, self.rng
        if not self.moved:
            return self.untagged(t)
        p = co.people[rng.choice(self.moved)]
        assert p.other is not None and p.moved_at is not None
        if rng.random() < 0.5:  # before the move, from the old address: a tagged thread
            old = co.deals_of[p.other]
            mine = [d for d in co.roles_of[p.idx] if co.deals[d].account == p.other]
            if not old:
                return self.untagged(t)
            d = rng.choice(mine or old)
            deal = co.deals[d]
            end = min(p.moved_at, deal.closed_at or p.moved_at) - 15 * DAY
            label = ("changed company", "before the move, tagged, from the old address")
            ext = [co.person_addr(p.idx, 1)]
            self.tagged_thread(t, d, ext, rng.choice([1, 2, 3]), label, self.when(co.start, end))
        else:  # after the move, from the new address
            stale = any(
                co.deals[d].status == "open" and co.deals[d].account == p.other
                for d in co.roles_of[p.idx]
            )
            variant = "after the move, new address" + (
                ", role left in the old deal" if stale else ""
            )
            self._untagged(t, p.account, p.idx, "changed company", variant)

    def untagged(self, t: int) -> None:
        rng = self.rng
        r = rng.random()
        if r < 0.7 and self.one_open:
            a, variant = rng.choice(self.one_open), "account with one open deal"
        elif self.no_deals:
            a, variant = rng.choice(self.no_deals), "account without deals"
        else:
            a, variant = rng.choice(self.one_open or self.two_open), "account with one open deal"
        self._untagged(t, a, self.people_of(a)[0], "untagged thread", variant)

    def two_accounts(self, t: int) -> None:
        co, rng = self.co, self.rng
        if not self.two:
            return self.untagged(t)
        p = co.people[rng.choice(self.two)]
        assert p.other is not None
        if rng.random() < 0.3 and co.deals_of[p.other]:
            d = rng.choice(co.deals_of[p.other])
            label = ("contact at two accounts", "tagged, from the other account's address")
            ext = [co.person_addr(p.idx, -1)]
            self.tagged_thread(t, d, ext, 2, label, self.deal_time(d))
        else:
            self._untagged(
                t,
                p.other,
                p.idx,
                "contact at two accounts",
                "untagged, from the other account's address",
                which=-1,
            )


# --- delivery and sync --------------------------------------------------------------------------


def mail_bytes(mail: Mail) -> bytes:
    from syncd.demo import email_bytes

    def shown(people: list[Addr]) -> list[str]:
        return [f"{name} <{address}>" for address, name in people]

    return email_bytes(
        sender=shown([mail.sender])[0],
        to=shown(mail.to),
        cc=shown(mail.cc),
        subject=mail.subject,
        when=mail.when,
        message_id=mail.mid,
        body=mail.body,
        in_reply_to=mail.in_reply_to,
        references=mail.references or None,
        calendar=mail.calendar,
    )


@dataclass
class Run:
    """What the sync passes did, all told."""

    passes: int = 0
    files: int = 0
    new_activities: int = 0
    quarantined: int = 0
    excluded: Counter[str] = field(default_factory=Counter)
    # seconds spent: migrating the database, loading the CRM, writing files, syncing
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))


def deliver_and_sync(
    convs: Conversations, work: Path, url: str, rng: random.Random, policy: str, csv_files: bool
) -> tuple[Any, Run]:
    """Load the CRM, add a local mailbox per user, then deliver the mails in a shuffled
    order, in ROUNDS rounds, each followed by a sync pass of every mailbox (in a shuffled
    order too). Returns the session factory and what was done."""
    from sqlalchemy import func, select

    from syncd.config import MatchingSettings, Settings
    from syncd.crm.database import make_engine, session_factory, upgrade
    from syncd.crm.models import Base, User
    from syncd.crm.rows import insert_rows
    from syncd.demo import add_local_mailbox, deliver, load_company, make_maildir
    from syncd.sync import sync_mailbox

    run = Run(files=len(convs.deliveries))
    start = time.perf_counter()
    engine = make_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    with sessions() as session:
        if session.scalar(select(func.count()).select_from(User)):
            raise SystemExit(f"the database at {url!r} is not empty: give a fresh one")
    run.seconds["migrate"] += time.perf_counter() - start
    start = time.perf_counter()
    if csv_files:
        convs.co.write_csv(work / "crm")
        load_company(sessions, work / "crm")
    else:
        models = {m.class_.__tablename__: m.class_ for m in Base.registry.mappers}
        tables: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for table, row in convs.co.rows():
            tables[table].append(row)
        with sessions.begin() as session:
            for table, rows in tables.items():
                insert_rows(session, models[table], rows)
    folders = []
    for u, (address, _) in enumerate(convs.co.users):
        folders.append(make_maildir(work / "mail" / f"rep{u:02d}"))
        add_local_mailbox(sessions, f"rep{u:02d}", address, maildir=str(folders[-1]))
    run.seconds["load"] += time.perf_counter() - start
    settings = Settings(
        home=work / "home",
        matching=MatchingSettings(opportunity=policy),
    )
    order = list(convs.deliveries)
    rng.shuffle(order)
    for r in range(ROUNDS):
        start = time.perf_counter()
        for n, (u, sent, i) in enumerate(order[r::ROUNDS]):
            mail = convs.mails[i]
            folder = folders[u] / ".Sent" if sent else folders[u]
            deliver(folder, mail_bytes(mail), mail.when, f"{rng.randrange(10**9)}.R{r}N{n}.bench")
        run.seconds["write"] += time.perf_counter() - start
        time.sleep(1.1)  # past the one second a pass leaves to files still being written
        start = time.perf_counter()
        for u in rng.sample(range(len(folders)), len(folders)):
            report = sync_mailbox(sessions, settings, f"rep{u:02d}")
            assert report.ok, report.error
            run.passes += 1
            run.new_activities += report.new_activities
            run.quarantined += report.quarantined
            run.excluded.update(report.excluded)
        run.seconds["sync"] += time.perf_counter() - start
    return sessions, run


# --- what syncd linked, against the truth ---------------------------------------------------------


@dataclass
class Found:
    """What syncd logged for one key: links (by the generator's indexes; an id the
    generator does not know is negative) and the note."""

    deals: dict[int, str] = field(default_factory=dict)  # deal -> the link's reason
    accounts: set[int] = field(default_factory=set)
    contacts: set[int] = field(default_factory=set)
    note: str | None = None


def read_links(sessions: Any, company: Company) -> dict[str, Found]:
    from sqlalchemy import select

    from syncd.crm.models import Account, Activity, ContactAddress, Link, Opportunity

    def number(ext: str | None) -> int | None:
        return int(ext.split("-")[1]) - 1 if ext and "-" in ext else None

    with sessions() as s:
        deals = {
            i: number(ext) for i, ext in s.execute(select(Opportunity.id, Opportunity.external_id))
        }
        accounts: dict[int, int | None] = {
            i: number(ext) for i, ext in s.execute(select(Account.id, Account.external_id))
        }
        contacts: dict[int, int | None] = {
            cid: company.by_address[address]
            for address, cid in s.execute(select(ContactAddress.address, ContactAddress.contact_id))
            if address in company.by_address
        }
        keys = {}
        found: dict[str, Found] = {}
        for aid, key, note in s.execute(select(Activity.id, Activity.key, Activity.match_note)):
            keys[aid] = key
            found[key] = Found(note=note)
        for aid, type_, target, reason in s.execute(
            select(Link.activity_id, Link.type, Link.target_id, Link.reason)
        ):
            f = found[keys[aid]]
            if type_ == "opportunity":
                f.deals[_known(deals, target)] = reason
            elif type_ == "account":
                f.accounts.add(_known(accounts, target))
            elif type_ == "contact":
                f.contacts.add(_known(contacts, target))
    return found


def _known(ids: dict[int, int | None], crm_id: int) -> int:
    known = ids.get(crm_id)
    return known if known is not None else -crm_id


OUTCOMES = ("correct", "wrong deal", "spurious", "missed", "not logged")


def score(truths: dict[str, Truth], found: dict[str, Found], company: Company) -> dict[str, Any]:
    """Precision and recall of each kind of link, the ambiguous share, and the deal
    outcomes by scenario and variant, with an example of each kind of error."""
    links = {k: Counter[str]() for k in ("deal", "account", "contact")}
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    variants: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    examples: dict[str, dict[str, str]] = defaultdict(dict)
    noted = truly_ambiguous = 0
    for key, t in truths.items():
        f = found.get(key)
        made = set(f.deals) if f else set()
        want = {t.deal} if t.deal is not None else set()
        seen = examples[t.scenario]
        for kind, got, true in (
            ("deal", made, want),
            ("account", f.accounts if f else set(), t.accounts),
            ("contact", f.contacts if f else set(), t.contacts),
        ):
            links[kind].update(made=len(got), truth=len(true), correct=len(got & true))
            if got != true and kind != "deal":
                outcomes[t.scenario][f"{kind} errors"] += 1
                if f"{kind} error" not in seen:
                    seen[f"{kind} error"] = _example(t, f, company)
        if f is None:
            outcome = "not logged"
        elif made == want:
            outcome = "correct"
        elif not want:
            outcome = "spurious"
        else:
            outcome = "missed" if not made else "wrong deal"
        if outcome != "correct" and outcome not in seen:
            seen[outcome] = _example(t, f, company)
        ambiguous = bool(f and f.note and f.note.startswith("ambiguous opportunity"))
        noted += ambiguous
        truly_ambiguous += t.why.startswith("ambiguous")
        for c in (outcomes[t.scenario], variants[t.scenario][t.variant]):
            c.update(messages=1, **{"with deal": t.deal is not None, outcome: 1})
            c["noted ambiguous"] += ambiguous
    unexpected = [k for k in found if k not in truths]
    for k in unexpected:  # logged though no truth has it: all its links are wrong
        f = found[k]
        links["deal"]["made"] += len(f.deals)
        links["account"]["made"] += len(f.accounts)
        links["contact"]["made"] += len(f.contacts)
    figures = {
        kind: {
            **c,
            "precision": c["correct"] / c["made"] if c["made"] else 1.0,
            "recall": c["correct"] / c["truth"] if c["truth"] else 1.0,
        }
        for kind, c in links.items()
    }
    return {
        "links": figures,
        "messages": len(truths),
        "logged": sum(1 for k in truths if k in found),
        "unexpected": len(unexpected),
        "ambiguous_noted": noted,
        "ambiguous_truth": truly_ambiguous,
        "deal_reasons": dict(
            sorted(Counter(r for f in found.values() for r in f.deals.values()).items())
        ),
        "scenarios": {
            s: {
                **outcomes[s],
                "variants": {name: dict(c) for name, c in variants[s].items()},
                "examples": examples[s],
            }
            for s in SCENARIOS
        },
    }


def _example(t: Truth, f: Found | None, company: Company) -> str:
    deal = company.deals[t.deal].ext if t.deal is not None else "none"

    def deals(ids: Iterable[int]) -> str:
        return ", ".join(company.deals[d].ext if d >= 0 else f"#{-d}" for d in ids) or "none"

    def accounts(ids: Iterable[int]) -> str:
        return (
            ", ".join(company.accounts[a].ext if a >= 0 else f"#{-a}" for a in sorted(ids))
            or "none"
        )

    truth = f"truth deal {deal} ({t.why}), accounts {accounts(t.accounts)}"
    if f is None:
        return f"{t.key} {t.subject!r} [{t.variant}]: {truth}; not logged"
    made = ", ".join(f"{deals([d])} ({r})" for d, r in f.deals.items()) or "none"
    return (
        f"{t.key} {t.subject!r} [{t.variant}]: {truth}; linked deal {made}, accounts "
        f"{accounts(f.accounts)}" + (f"; note {f.note!r}" if f.note else "")
    )


# --- the report ---------------------------------------------------------------------------------


def aim_met(deal: dict[str, float]) -> bool:
    return deal["precision"] >= PRECISION_AIM and deal["recall"] >= RECALL_AIM


def print_report(result: dict[str, Any]) -> None:
    c = result["company"]
    print(
        f"matching quality: {result['threads']:,} conversations, {result['messages']:,} "
        f"activities expected (seed {result['seed']}, delivery order {result['order_seed']}, "
        f"{result['database']}, "
        f"matching.opportunity = {result['policy']})"
    )
    print(
        f"company: {c['users']} users, {c['accounts']:,} accounts ({c['subsidiaries']} sharing "
        f"a parent's domain, {c['multi_domain']} with several domains), {c['contacts']:,} "
        f"contacts ({c['free_mail']} on free mail, {c['two_accounts']} at two accounts, "
        f"{c['moved']} changed company), {c['deals']:,} deals ({c['open']} open, "
        f"{c['with_roles']} with contact roles)"
    )
    run = result["run"]
    print(
        f"delivery: {run['files']:,} files into {c['users']} Maildirs, shuffled, in {ROUNDS} "
        f"rounds; {run['passes']} sync passes logged {run['new_activities']:,} activities "
        f"({result['logged']:,} of those expected, {result['unexpected']} unexpected), "
        f"{run['quarantined']} quarantined, not logged: {run['excluded'] or 'none'}"
    )
    print("\n" + " ".join(f"{h:>9s}" for h in ("link", "made", "correct", "truth")), end="")
    print(f" {'precision':>9s} {'recall':>9s}")
    for kind, f in result["links"].items():
        print(
            f"{kind:>9s} {f['made']:9,} {f['correct']:9,} {f['truth']:9,} "
            f"{f['precision']:9.4f} {f['recall']:9.4f}"
        )
    deal = result["links"]["deal"]
    print(
        f"aim: deal precision >= {PRECISION_AIM} with recall >= {RECALL_AIM}: "
        f"{'met' if aim_met(deal) else 'missed'} ({deal['precision']:.4f}, {deal['recall']:.4f})"
    )
    m = result["messages"]
    print(
        f"left unlinked as ambiguous (note 'ambiguous opportunity'): {result['ambiguous_noted']:,} "
        f"of {m:,} ({result['ambiguous_noted'] / m:.1%}); ambiguous by the truth: "
        f"{result['ambiguous_truth']:,} ({result['ambiguous_truth'] / m:.1%})"
    )
    print(f"deal links by reason: {result['deal_reasons']}")
    cols = ["messages", "with deal", *OUTCOMES, "noted ambiguous"]
    cols += ["account errors", "contact errors"]
    heads = ["msgs", "w/deal", "correct", "wrong", "spurious", "missed", "unlogged", "ambig"]
    heads += ["acct-err", "cont-err"]
    print("\ndeal outcomes by scenario (then by variant); account and contact errors by message")
    print(f"{'':58s}" + "".join(f"{h:>9s}" for h in heads))
    for name, s in result["scenarios"].items():
        print(f"{name[:58]:58s}" + "".join(f"{s.get(h, 0):9,}" for h in cols))
        for variant, v in sorted(s["variants"].items()):
            print(f"  {variant[:56]:56s}" + "".join(f"{v.get(h, 0):9,}" for h in cols[:-2]))
    print("\nan example of each kind of error:")
    for name, s in result["scenarios"].items():
        for kind, text in s["examples"].items():
            print(f"- {name} / {kind}: {text}")
    t = result["seconds"]
    print(
        f"\ntime: generate {t['generate']:.1f} s, migrate the database {t['migrate']:.1f} s, "
        f"load the CRM {t['load']:.1f} s, write the files {t['write']:.1f} s, sync "
        f"{t['sync']:.1f} s ({run['files'] / max(t['sync'], 1e-9):,.0f} files/s), read "
        f"{t['read']:.1f} s; total {t['total']:.1f} s (with {ROUNDS} pauses of 1.1 s); "
        f"peak RSS {result['peak_rss_mb']:.0f} MB"
    )


def main() -> None:
    from syncd.config import MatchingSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help=f"conversations (default {THREADS:,} x scale)")
    parser.add_argument("--seed", type=int, default=1, help="the company and its mail")
    parser.add_argument(
        "--order-seed", type=int, help="the order of delivery (default: --seed): the same mail"
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="the company's size (and the default threads)"
    )
    parser.add_argument("--database-url", help="a fresh database (default: SQLite in a temp dir)")
    parser.add_argument(
        "--opportunity",
        choices=["most-recent", "single-open-only", "all-open"],
        default=MatchingSettings().opportunity,
        help="matching.opportunity, the policy under test (default: the config's default)",
    )
    parser.add_argument(
        "--csv",
        action="store_true",
        help="load the CRM from CSV files with 'syncd crm load' (slow) rather than in bulk",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    # the migrations' reflection of an index on an expression (harmless)
    warnings.filterwarnings("ignore", message="Skipped unsupported reflection")
    if args.scale <= 0:
        parser.error("--scale must be above 0")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, not {args.threads}")
    threads = args.threads if args.threads is not None else max(1, round(THREADS * args.scale))
    begin = time.perf_counter()
    now = datetime.now(UTC).replace(microsecond=0)
    rng = random.Random(args.seed)
    company = Company(rng, args.scale, now)
    convs = Conversations(company, rng)
    convs.generate(threads)
    generated = time.perf_counter() - begin
    work = Path(tempfile.mkdtemp(prefix="syncd-quality-"))
    try:
        url = args.database_url or f"sqlite:///{work / 'crm.db'}"
        order = random.Random(args.seed if args.order_seed is None else args.order_seed)
        sessions, run = deliver_and_sync(convs, work, url, order, args.opportunity, args.csv)
        start = time.perf_counter()
        result = score(convs.truths, read_links(sessions, company), company)
        read = time.perf_counter() - start
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    people = Counter(p.kind for p in company.people)
    result.update(
        threads=threads,
        seed=args.seed,
        order_seed=args.seed if args.order_seed is None else args.order_seed,
        policy=args.opportunity,
        database=url.split(":", 1)[0],
        company={
            "users": len(company.users),
            "accounts": len(company.accounts),
            "subsidiaries": sum(a.mail_domains[0] not in a.domains for a in company.accounts),
            "multi_domain": sum(len(a.domains) > 1 for a in company.accounts),
            "contacts": len(company.people),
            "free_mail": people["free"],
            "two_accounts": people["two"],
            "moved": people["moved"],
            "deals": len(company.deals),
            "open": len(convs.open_deals),
            "with_roles": sum(bool(d.roles) for d in company.deals),
        },
        run={k: v for k, v in run.__dict__.items() if k != "seconds"},
        seconds={
            "generate": generated,
            **run.seconds,
            "read": read,
            "total": time.perf_counter() - begin,
        },
        peak_rss_mb=peak_rss_mb(),
        aim={
            "deal_precision": PRECISION_AIM,
            "deal_recall": RECALL_AIM,
            "met": aim_met(result["links"]["deal"]),
        },
    )
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_report(result)


if __name__ == "__main__":
    main()
