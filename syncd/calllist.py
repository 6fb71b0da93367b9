"""Today's call list: one task a salesperson a working day, written into their calendar by
the same writers as the follow-up tasks (rule ``call-list``). Pure: what the CRM says of
the user's day (``crm.queries.call_list_facts``) in, at most one task plan per list out.

A list holds, in the user's time zone:

- the open follow-ups due today or before (overdue), by due time;
- the open deals they own with no touch for ``call_list.cooling_days``, hottest first
  (``syncd.engagement``), at most ``call_list.deals`` of them;
- the day's meetings they take part in, each with its external participants, their last
  touch before it and their open deals.

Its uid is the user's and the local day's, so every pass of that day rewrites the same
calendar entry: a new version when the content changes, cancelled (``empty``) when nothing
is left, opened again if something comes back. It is written on working days only
(``WorkingTime.working``: no weekend, no public holiday), from the start of working hours,
due then. Once its day is over, an open list is cancelled (``expired``): the calendar never
shows two. ``call_list.enabled`` turns lists on or off for everyone; a user's own
``call_list`` (users.csv) wins either way, and turning it off cancels today's
(``turned off``). A list the user completes or deletes in their calendar stays closed for
the day. Times in the text are the user's, the zone named (``syncd.display``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from syncd.config import CallListSettings, Settings
from syncd.crm.models import TaskResolution
from syncd.crm.queries import CallListFacts, CoolingDeal, DayMeeting, MeetingPerson
from syncd.crm.tasks import TaskPlan
from syncd.display import shown
from syncd.followups import RULE_CALL_LIST, WorkingTime, task_uid
from syncd.items import TaskStatus


@dataclass(frozen=True)
class CallDay:
    """The user's local day ``now`` falls in: its list's uid, its bounds (local midnights)
    and the start of its working hours (the list's due time)."""

    date: date
    tz: ZoneInfo
    uid: str
    start: datetime
    end: datetime
    due: datetime


def today(user_email: str, wt: WorkingTime, now: datetime) -> CallDay:
    local = now.astimezone(wt.tz).date()
    return CallDay(
        local,
        wt.tz,
        task_uid(RULE_CALL_LIST, f"{user_email}:{local.isoformat()}"),
        datetime.combine(local, time(0), tzinfo=wt.tz),
        datetime.combine(local + timedelta(days=1), time(0), tzinfo=wt.tz),
        datetime.combine(local, wt.start, tzinfo=wt.tz),
    )


def enabled(settings: CallListSettings, user_call_list: bool | None) -> bool:
    """Whether the user gets call lists: their own choice, else the config's."""
    return settings.enabled if user_call_list is None else user_call_list


def due(day: CallDay, wt: WorkingTime, now: datetime) -> bool:
    """Whether ``day``'s list is written at ``now``: a working day, its hours begun."""
    return wt.working(day.date) and now >= day.due


def plan(
    user_id: int,
    day: CallDay,
    settings: Settings,
    facts: CallListFacts | None,
    existing: Mapping[str, TaskStatus],
    *,
    on: bool,
) -> list[TaskPlan]:
    """The plans for the user's lists: today's written (from ``facts``; None: no list today)
    or cancelled, every other day's open one cancelled. ``existing`` maps the uid of each
    open list, and of today's whatever its status, to its status; ``on``: the user gets
    call lists (:func:`enabled`)."""
    plans = [
        _closed(user_id, uid, day, "expired")
        for uid, status in existing.items()
        if uid != day.uid and status == "open"
    ]
    if facts is None or not on:
        if existing.get(day.uid) == "open":
            plans.append(_closed(user_id, day.uid, day, "expired" if on else "turned off"))
        return plans
    shown_deals = _hottest(facts.cooling, settings.call_list.deals)
    if not (facts.followups or shown_deals or facts.meetings):
        if existing.get(day.uid) == "open":
            plans.append(_closed(user_id, day.uid, day, "empty"))
        return plans
    plans.append(
        TaskPlan(
            uid=day.uid,
            rule=RULE_CALL_LIST,
            user_id=user_id,
            activity_id=None,
            contact_id=None,
            opportunity_id=None,
            title=_title(len(facts.followups), len(facts.cooling), len(facts.meetings)),
            description=_describe(day, facts, shown_deals, settings),
            due=day.due,
            status="open",
        )
    )
    return plans


def _closed(user_id: int, uid: str, day: CallDay, why: TaskResolution) -> TaskPlan:
    """A list cancelled (its content is left as it was: the plan only closes it)."""
    return TaskPlan(
        uid=uid,
        rule=RULE_CALL_LIST,
        user_id=user_id,
        activity_id=None,
        contact_id=None,
        opportunity_id=None,
        title="",
        description="",
        due=day.due,
        status="cancelled",
        resolution=why,
    )


def _hottest(deals: tuple[CoolingDeal, ...], most: int) -> list[CoolingDeal]:
    return sorted(deals, key=lambda d: (-d.engagement.points, len(d.external_id), d.external_id))[
        :most
    ]


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _title(followups: int, deals: int, meetings: int) -> str:
    parts = [
        _count(n, word)
        for n, word in ((followups, "follow-up"), (deals, "cooling deal"), (meetings, "meeting"))
        if n
    ]
    return "Today's calls: " + ", ".join(parts)


def _describe(
    day: CallDay, facts: CallListFacts, deals: list[CoolingDeal], settings: Settings
) -> str:
    """The list as text, the same all day long unless the CRM changes (no "2 hours ago")."""
    tz = day.tz
    lines = [f"{day.date:%A} {day.date.day} {day.date:%B %Y}, times in {tz.key}."]
    if facts.followups:
        lines += ["", f"Follow-ups due ({len(facts.followups)})"]
        for f in facts.followups:
            late = ", overdue" if f.due < day.start else ""
            lines.append(f"- {f.title} (due {shown(f.due, tz)}{late})")
    if deals:
        days = settings.call_list.cooling_days
        lines += ["", f"Cooling deals, no touch for {days} days ({len(facts.cooling)})"]
        lines += [f"- {_deal(d, tz)}" for d in deals]
        if len(facts.cooling) > len(deals):
            lines.append(f"- and {len(facts.cooling) - len(deals)} more")
    if facts.meetings:
        lines += ["", f"Meetings ({len(facts.meetings)})"]
        for m in facts.meetings:
            lines += _meeting(m, tz)
    return "\n".join(lines)


def _deal(d: CoolingDeal, tz: ZoneInfo) -> str:
    about = ", ".join(x for x in (d.account, d.stage) if x)
    touch = f"last touch {shown(d.last_touch, tz)}" if d.last_touch else "never touched"
    return f"{d.external_id} {d.name} ({about}): {d.engagement.level}, {touch}"


def _meeting(m: DayMeeting, tz: ZoneInfo) -> list[str]:
    lines = [f"- {shown(m.starts_at, tz)} {m.subject or '(no subject)'}"]
    lines += [f"  {_person(p, tz)}" for p in m.people]
    return lines


def _person(p: MeetingPerson, tz: ZoneInfo) -> str:
    if not p.known:
        return f"{p.name} <{p.address}>: not in the CRM"
    who = f"{p.name} ({p.account})" if p.account else p.name
    touch = f"last touch {shown(p.last_touch, tz)}" if p.last_touch else "no touch before"
    deals = f"open deals: {', '.join(p.deals)}" if p.deals else "no open deal"
    return f"{who}: {touch}; {deals}"
