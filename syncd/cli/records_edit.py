"""``syncd contact``, ``syncd account`` and ``syncd opportunity``: CRM records removed or
merged by hand (:mod:`syncd.crm.records_edit` says what each does). One transaction a
command; ``--dry-run`` does all of it and rolls it back."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from syncd.cli.common import _json, app, fail, printable, say, state
from syncd.config import Settings
from syncd.crm import merge as merging
from syncd.crm import records_edit as edit
from syncd.crm.corrections import CorrectionError
from syncd.crm.database import describe_error

contact_app = typer.Typer(
    help="CRM contacts: remove one or one of its addresses, merge two.", no_args_is_help=True
)
account_app = typer.Typer(
    help="CRM accounts: remove one or one of its domains.", no_args_is_help=True
)
opportunity_app = typer.Typer(help="CRM opportunities (deals): remove one.", no_args_is_help=True)
app.add_typer(contact_app, name="contact")
app.add_typer(account_app, name="account")
app.add_typer(opportunity_app, name="opportunity")

Address = Annotated[str, typer.Argument(help="One of the contact's email addresses.")]
Domain = Annotated[str, typer.Argument(help="One of the account's domains.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show what would change; change nothing.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]

R = TypeVar("R")


def _run(change: Callable[[Session, Settings], R], dry_run: bool) -> R:
    """``change`` in one transaction: committed, or with --dry-run all of it done and
    rolled back (what it shows is what the real run does). A record that does not exist,
    or a change that cannot be made, fails with exit 2; the database's refusal with 1."""
    try:
        with state.sessions().begin() as session:
            done = change(session, state.settings())
            if dry_run:
                session.rollback()
    except CorrectionError as exc:
        fail(str(exc), 2)
    except SQLAlchemyError as exc:
        url = state.settings().database_url()
        fail(f"nothing was changed: the database refused it: {describe_error(exc, url)}")
    return done


def _show(
    as_json: bool, dry_run: bool, done: Any, lead: str, rows: list[tuple[str, object]]
) -> None:
    """The summary: JSON, or a sentence and a count a line (the same for --dry-run)."""
    warnings = list(getattr(done, "warnings", []))
    for warning in warnings:
        say(f"syncd: warning: {printable(warning)}", sys.stderr)
    if as_json:
        _json({"dry_run": dry_run, **asdict(done)})
        return
    say(printable(lead))
    for label, value in rows:
        say(f"  {label}: {printable(str(value))}")
    if dry_run:
        say("nothing was changed (--dry-run)")


def _list(values: list[str]) -> str:
    return ", ".join(values) if values else "none"


def _counted(values: list[str]) -> str:
    """``2 (a, b)``, or ``0``."""
    return f"{len(values)} ({', '.join(values)})" if values else "0"


# --- contact --------------------------------------------------------------------------------


@contact_app.command("remove")
def contact_remove_cmd(address: Address, dry_run: DryRun = False, as_json: AsJson = False) -> None:
    """Remove the contact that has this address: all its addresses and its roles in deals.
    Its activities stay, without links to it; their conversations' deals are decided again
    (its role may have chosen one)."""
    done = _run(lambda s, c: edit.remove_contact(s, c, address), dry_run)
    verb = "would remove" if dry_run else "removed"
    _show(
        as_json,
        dry_run,
        done,
        f"{verb} contact {done.contact!r} ({_list(done.addresses)})",
        [
            ("addresses removed", len(done.addresses)),
            ("opportunity roles removed", _counted(done.roles)),
            ("activities it was on (kept)", done.activities),
            ("contact links removed", done.links_removed),
            ("participants no longer linked to it", done.participants_unlinked),
            ("follow-up tasks that named it (kept)", done.tasks_detached),
            ("link vetoes removed", done.vetoes_removed),
            ("activities relinked", done.relinked),
        ],
    )


@contact_app.command("remove-address")
def contact_remove_address_cmd(
    address: Address, dry_run: DryRun = False, as_json: AsJson = False
) -> None:
    """Take one address off its contact (not its last one: 'syncd contact remove' removes
    the contact). Activities whose participant had it lose the link to the contact, unless
    another participant is still the contact or it was linked by hand."""
    done = _run(lambda s, c: edit.remove_address(s, c, address), dry_run)
    verb = "would remove" if dry_run else "removed"
    _show(
        as_json,
        dry_run,
        done,
        f"{verb} address {done.address} from contact {done.contact!r}",
        [
            ("addresses left", _list(done.addresses_left)),
            ("participants no longer linked to the contact", done.participants_unlinked),
            ("contact links removed", done.links_removed),
            ("activities relinked", done.relinked),
        ],
    )


@contact_app.command("merge")
def contact_merge_cmd(
    keep: Annotated[str, typer.Argument(help="An address of the contact to keep.")],
    other: Annotated[str, typer.Argument(help="An address of the contact merged into it.")],
    dry_run: DryRun = False,
    as_json: AsJson = False,
) -> None:
    """Merge two contacts that are one person: the other's addresses, roles in deals,
    activity links, participants, tasks and vetoes move to the kept contact (never twice),
    which keeps its name and account unless it has none; the other is removed. Contacts at
    two accounts are merged too, with a warning."""
    done = _run(lambda s, c: merging.merge_contacts(s, c, keep, other), dry_run)
    verb = "would merge" if dry_run else "merged"
    _show(
        as_json,
        dry_run,
        done,
        f"{verb} contact {done.merged!r} into {done.kept!r}",
        [
            ("addresses moved", _counted(done.addresses_moved)),
            ("taken where the kept contact had none", _list(done.took)),
            ("opportunity roles moved", done.roles_moved),
            ("opportunity roles dropped (the kept contact has one)", done.roles_dropped),
            ("contact links moved", done.links_moved),
            ("contact links dropped (linked to both, or vetoed)", done.links_dropped),
            ("participants moved", done.participants_moved),
            ("follow-up tasks moved", done.tasks_moved),
            ("link vetoes moved", done.vetoes_moved),
            ("link vetoes dropped (on both, or lifted by a manual link)", done.vetoes_dropped),
            ("import counts moved (one a mailbox)", done.knowledge_moved),
            ("activities relinked", done.relinked),
        ],
    )


# --- account --------------------------------------------------------------------------------


@account_app.command("remove")
def account_remove_cmd(domain: Domain, dry_run: DryRun = False, as_json: AsJson = False) -> None:
    """Remove the account that has this domain, with all its domains. Its contacts stay,
    without an account; its activities lose their links to it. Refused while it has deals:
    remove them first ('syncd opportunity remove')."""
    done = _run(lambda s, c: edit.remove_account(s, c, domain), dry_run)
    verb = "would remove" if dry_run else "removed"
    _show(
        as_json,
        dry_run,
        done,
        f"{verb} account {done.account!r} ({_list(done.domains)})",
        [
            ("domains removed", len(done.domains)),
            ("contacts left without an account", done.contacts_detached),
            ("activities linked to it (kept)", done.activities),
            ("account links removed", done.links_removed),
            ("link vetoes removed", done.vetoes_removed),
            ("activities relinked", done.relinked),
        ],
    )


@account_app.command("remove-domain")
def account_remove_domain_cmd(
    domain: Domain, dry_run: DryRun = False, as_json: AsJson = False
) -> None:
    """Take one domain off its account (not its last one: 'syncd account remove' removes
    the account). Activities linked to the account only by a participant at that domain
    lose the link."""
    done = _run(lambda s, c: edit.remove_domain(s, c, domain), dry_run)
    verb = "would remove" if dry_run else "removed"
    _show(
        as_json,
        dry_run,
        done,
        f"{verb} domain {done.domain} from account {done.account!r}",
        [
            ("domains left", _list(done.domains_left)),
            ("account links removed", done.links_removed),
            ("activities relinked", done.relinked),
        ],
    )


# --- opportunity ----------------------------------------------------------------------------


@opportunity_app.command("remove")
def opportunity_remove_cmd(
    external_id: Annotated[str, typer.Argument(help="The deal's external id, e.g. OPP-101.")],
    dry_run: DryRun = False,
    as_json: AsJson = False,
) -> None:
    """Remove a deal: its links from activities, its contacts' roles, the vetoes on it.
    The activities stay; their conversations' deals are decided again (another deal may be
    chosen)."""
    done = _run(lambda s, c: edit.remove_opportunity(s, c, external_id), dry_run)
    verb = "would remove" if dry_run else "removed"
    _show(
        as_json,
        dry_run,
        done,
        f"{verb} opportunity {done.opportunity} (account {done.account!r})",
        [
            ("activities linked to it (kept)", done.activities),
            ("opportunity links removed", done.links_removed),
            ("contact roles removed", done.roles_removed),
            ("link vetoes removed", done.vetoes_removed),
            ("follow-up tasks that named it (kept)", done.tasks_detached),
            ("activities relinked", done.relinked),
        ],
    )
