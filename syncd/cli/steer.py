"""``syncd explain``, ``link``, ``unlink``, ``activity delete``, ``forget`` and ``rematch``:
why an item was (not) logged, and an admin's corrections of what is logged and linked."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from syncd.cli.common import _json, app, fail, parse_day, printable, say, state
from syncd.crm import corrections
from syncd.crm import explain as explaining
from syncd.display import shown, zone


@app.command("explain")
def explain_cmd(
    target: Annotated[
        str | None,
        typer.Argument(
            help="A Message-ID (with or without <>), a meeting's ical:UID, or an activity id."
        ),
    ] = None,
    mailbox: Annotated[
        str | None, typer.Option(help="With --provider-id: the mailbox that holds the item.")
    ] = None,
    provider_id: Annotated[
        str | None,
        typer.Option(
            "--provider-id",
            help="The item's id in the mailbox (as 'syncd quarantine list' and audits show).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Why a message or meeting was logged (each link and the rule that made it), skipped
    (which exclusion), quarantined (why), or not seen at all. Exit 0 when syncd has a trace
    of it, 1 when it has none, 2 when the activity or mailbox named does not exist."""
    if (mailbox is None) != (provider_id is None):
        fail("--mailbox and --provider-id go together: give both", 2)
    if mailbox is not None and target is not None:
        fail("give a Message-ID or activity id, or --mailbox and --provider-id, not both", 2)
    if mailbox is None and target is None:
        fail("name the item: a Message-ID, an activity id, or --mailbox and --provider-id", 2)
    try:
        with state.sessions()() as session:
            found = explaining.explain(session, target, mailbox=mailbox, provider_id=provider_id)
    except explaining.NotFound as exc:
        fail(str(exc), 2)
    if as_json:
        _json(found.as_dict())
    else:
        _show(found)
    if found.verdict == "not seen":
        raise typer.Exit(1)


def _when(iso: str) -> str:
    """An ISO time as people read it: to the minute, in the company's zone, named."""
    return shown(datetime.fromisoformat(iso), zone(state.settings()))


def _show(found: explaining.Explanation) -> None:
    say(f"{printable(found.asked)}: {found.verdict}")
    if found.activity is not None:
        _show_activity(found.activity)
    if found.deleted is not None:
        say(
            f"  deleted by {found.deleted['by']} on {_when(found.deleted['at'])} "
            f"({printable(found.deleted['subject'])!r}): never logged again"
        )
    for s in found.skipped:
        say(
            f"  skipped by mailbox {s['mailbox']!r} ({printable(s['source'])}, "
            f"{printable(s['provider_id'])}) on {_when(s['seen_at'])}: {s['reason']}: {s['why']}"
        )
    for q in found.quarantined:
        say(
            f"  quarantined by mailbox {q['mailbox']!r} ({printable(q['source'])}, "
            f"{printable(q['provider_id'])}) since {_when(q['since'])}, {q['attempts']} "
            f"attempt(s): {printable(q['reason'])}; see 'syncd quarantine show'"
        )
    if found.verdict == "not seen":
        say(
            "  no mailbox has logged, skipped or quarantined it: it may not have arrived yet "
            "(run 'syncd sync'), be in a folder syncd does not read (Trash, Junk, Spam, "
            "Drafts, exclusions.folders), be older than the mailbox's first date (--since), "
            "or be in no mailbox of syncd's ('syncd mailbox list')"
        )


def _show_activity(a: dict[str, Any]) -> None:
    say(
        f"  activity {a['id']}: {a['kind']} {a['direction']} {_when(a['occurred_at'])} "
        f"{printable(a['subject'])!r}" + (" [cancelled]" if a["status"] == "cancelled" else "")
    )
    if not a["links"]:
        say("  no links")
    for lk in a["links"]:
        say(f"  linked to {lk['type']} {printable(lk['name'])}: {lk['reason']}: {lk['rule']}")
    if a["note"]:
        say(f"  note: {printable(a['note'])}")
    for s in a["sightings"]:
        say(
            f"  seen by mailbox {s['mailbox']!r} ({printable(s['source'])}, "
            f"{printable(s['provider_id'])}) on {_when(s['seen_at'])}"
        )
    for t in a["tasks"]:
        title = printable(t["title"])
        say(f"  follow-up task ({t['rule']}, {t['status']}, due {_when(t['due'])}): {title}")


Activity = Annotated[int, typer.Argument(help="The activity's id ('syncd activities').")]
Deal = Annotated[str | None, typer.Option(help="An opportunity, by external id.")]
Person = Annotated[str | None, typer.Option(help="A contact, by one of its addresses.")]
Company = Annotated[str | None, typer.Option(help="An account, by domain or name.")]


@app.command("link")
def link_cmd(
    activity: Activity, opportunity: Deal = None, contact: Person = None, account: Company = None
) -> None:
    """Link an activity to a deal, a contact or an account by hand (reason 'manual'). A
    manual link is kept by every later sync, settling and re-match; a deal linked by hand
    replaces the activity's weaker deal links, and its conversation follows it."""
    _correct(corrections.link, activity, opportunity, contact, account)


@app.command("unlink")
def unlink_cmd(
    activity: Activity, opportunity: Deal = None, contact: Person = None, account: Company = None
) -> None:
    """Remove an activity's link to a deal, a contact or an account, whatever made it, and
    remember it: the same link is never made again for this activity ('syncd link' lifts
    that)."""
    _correct(corrections.unlink, activity, opportunity, contact, account)


def _correct(
    fix: Any, activity: int, opportunity: str | None, contact: str | None, account: str | None
) -> None:
    try:
        with state.sessions().begin() as session:
            target = corrections.target_of(
                session, opportunity=opportunity, contact=contact, account=account
            )
            done = fix(session, state.settings(), activity, target, datetime.now(UTC))
    except corrections.CorrectionError as exc:
        fail(str(exc), 2)
    say(printable(done))


activity_app = typer.Typer(help="One activity: delete it.", no_args_is_help=True)
app.add_typer(activity_app, name="activity")


@activity_app.command("delete")
def activity_delete_cmd(
    activity: Activity,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Delete an activity: its participants, links, sightings and conversation keys. Its
    follow-up tasks are cancelled, in the calendars too (at their owners' next pass); no
    mailbox logs it again ('syncd explain' says it was deleted)."""
    try:
        with state.sessions().begin() as session:
            done = corrections.delete_activity(
                session, state.settings(), activity, datetime.now(UTC)
            )
    except corrections.CorrectionError as exc:
        fail(str(exc), 2)
    if as_json:
        _json(vars(done))
        return
    say(
        f"activity {done.activity_id} deleted ({printable(done.subject)!r}): {done.links} "
        f"link(s), seen by {done.sightings} mailbox(es); {done.tasks_cancelled} follow-up "
        f"task(s) cancelled, in the calendar at the next pass; {done.relinked} other "
        "activit(ies) of its conversation relinked; it will not be logged again"
    )


@app.command("forget")
def forget_cmd(
    address: Annotated[str | None, typer.Option(help="A person, by email address.")] = None,
    domain: Annotated[str | None, typer.Option(help="A company, by domain.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be removed; change nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Forget a person or a company everywhere, and never log them again: every activity
    whose only CRM reason they were (participants, bodies, sightings, tasks: cancelled in
    the calendars too), them out of every other activity and its texts, their contact
    addresses (and contacts left with none), account domains, quarantined messages,
    skipped items and import records. Only a digest of the address or domain is kept, to
    exclude it from then on. --dry-run shows the same without changing anything."""
    from syncd.crm import forget as forgetting

    if (address is None) == (domain is None):
        fail("name one of --address or --domain", 2)
    with state.sessions()() as session:
        try:
            done = forgetting.forget(
                session, state.settings(), address=address, domain=domain, now=datetime.now(UTC)
            )
        except ValueError as exc:
            session.rollback()
            fail(f"--{'address' if address else 'domain'}: {exc}", 2)
        if dry_run:
            session.rollback()  # all of it was done, and none of it is kept
        else:
            session.commit()
    if as_json:
        _json({"dry_run": dry_run, **vars(done)})
        return
    lead = "would forget" if dry_run else "forgot"
    say(f"{lead} {done.kind} {done.value}" + (" (forgotten before)" if done.already else ""))
    rows = [
        ("activities removed", len(done.activities_removed)),
        ("activities it was taken out of", len(done.activities_cleaned)),
        ("follow-up tasks cancelled", done.tasks_cancelled),
        ("contacts removed", len(done.contacts_removed)),
        ("contact addresses removed", done.addresses_removed),
        ("account domains removed", done.domains_removed),
        ("accounts removed", len(done.accounts_removed)),
        ("texts cleaned", done.texts_cleaned),
        ("quarantined messages removed", done.quarantine_removed),
        ("skipped items removed", done.skips_removed),
        ("import records removed or cleaned", done.import_records_removed),
    ]
    for label, n in rows:
        say(f"  {label}: {n}")
    if done.keys_kept:
        say(
            f"  {done.keys_kept} Message-ID(s) or thread key(s) of activities kept hold it: "
            "left as they are (they identify those messages and their conversations)"
        )
    for name in done.accounts_kept:
        say(f"  account {printable(name)!r} kept: it has other domains, contacts or deals")
    if dry_run:
        say("nothing was changed (--dry-run)")


@app.command("rematch")
def rematch_cmd(
    since: Annotated[
        str | None, typer.Option(help="Only activities on or after this day (YYYY-MM-DD).")
    ] = None,
    opportunity: Annotated[
        str | None,
        typer.Option(
            help="Only the activities this deal (external id) may concern: linked to it, to "
            "its account or its contacts, or naming it by tag."
        ),
    ] = None,
    queued: Annotated[
        bool,
        typer.Option(
            "--queued",
            help="Re-match now what 'syncd crm load' queued for the daemon (the activities "
            "its changed contacts, accounts and deals touch).",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the changes; make none.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Decide the links of stored activities again under today's CRM and rules: a deal
    created or closed since, a contact or account added or moved, a changed policy
    (matching.opportunity). Manual links and unlinks are kept. Prints every change
    (activity, link, old, new, with the reason of each); --dry-run prints the same and
    changes nothing. An activity that would not be logged today is listed, not removed."""
    from syncd.crm import rematch as rematching

    day = parse_day("--since", since)
    if queued and (since or opportunity):
        fail("--queued re-matches what a CRM load queued: give it alone", 2)
    with state.sessions()() as session:
        try:
            taken: list[int] = []
            if queued:
                ids, taken = rematching.queued_activities(session, state.settings())
            else:
                ids = rematching.chosen(
                    session, state.settings(), since=day, opportunity=opportunity
                )
            done = rematching.rematch(session, state.settings(), ids)
            if taken:
                rematching.clear_queue(session, taken)
        except LookupError as exc:
            session.rollback()
            fail(f"--opportunity: {exc}", 2)
        if dry_run:
            session.rollback()  # the same work as a real run, none of it kept
        else:
            session.commit()
    if as_json:
        _json(
            {
                "dry_run": dry_run,
                "examined": done.examined,
                "activities_changed": done.activities_changed,
                "changes": [vars(c) for c in done.changes],
                "excluded_now": [{"activity": a, "reason": r} for a, r in done.excluded_now],
            }
        )
        return
    _show_rematch(done, dry_run)


def _show_rematch(done: Any, dry_run: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    if done.changes:
        tz = zone(state.settings())
        table = Table("activity", "when", "subject", "link", "old", "new")
        for c in done.changes:
            table.add_row(
                str(c.activity_id),
                shown(c.when, tz),
                printable(c.subject)[:50],
                c.type,
                printable(c.old) if c.old else "-",
                printable(c.new) if c.new else "-",
            )
        Console(width=200).print(table)
    lead = "would change" if dry_run else "changed"
    say(
        f"{done.examined} activit(ies) decided again: {lead} {len(done.changes)} link(s) of "
        f"{done.activities_changed} activit(ies)"
    )
    for activity_id, reason in done.excluded_now:
        say(
            f"  activity {activity_id} would not be logged today ({printable(reason)}): kept; "
            f"'syncd activity delete {activity_id}' removes it"
        )
    if dry_run:
        say("nothing was changed (--dry-run)")
