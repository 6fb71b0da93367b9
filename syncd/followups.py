"""Follow-up rules -> tasks. Pure: candidates (from ``crm.queries``) in, task plans out.

Rules (``[followups]`` in the config), in the user's time zone and working days:

``no-reply``
    An outbound email to a contact with no reply from any external participant within
    N business days gets "Follow up with NAME: SUBJECT", due at the start of the next
    working day after that deadline. A reply that arrives later closes it (done, replied).
``meeting-notes``
    A meeting with a contact that has ended gets "Send notes and next steps: SUBJECT", due
    at the end of that working day. A meeting cancelled afterwards cancels it.
``call-list``
    Today's call list, one task a user and working day, of no activity: see
    :mod:`syncd.calllist` (``[call_list]`` in the config).

Only activities inside the look-back window (default 14 days) get new tasks, so a first
sync of years of mail does not flood a calendar; a task already open is still resolved.
Due times depend on the activity, never on when syncd runs, so re-runs agree.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from syncd.config import WEEKDAYS, FollowupSettings, Settings, parse_working_hours
from syncd.crm.models import TaskResolution, TaskRule
from syncd.crm.queries import Candidate
from syncd.crm.tasks import TaskPlan
from syncd.display import shown
from syncd.items import EARLIEST, TASK_UID_PREFIX, TaskStatus, latest

RULE_NO_REPLY: Final = "no-reply"
RULE_MEETING_NOTES: Final = "meeting-notes"
RULE_CALL_LIST: Final = "call-list"
# the rules that follow up one activity each (their task's uid is the activity's)
ACTIVITY_RULES: Final[tuple[TaskRule, ...]] = (RULE_NO_REPLY, RULE_MEETING_NOTES)
RULES: Final[tuple[TaskRule, ...]] = (*ACTIVITY_RULES, RULE_CALL_LIST)


@dataclass(frozen=True)
class WorkingTime:
    """A user's working time: their zone, hours and working days, less the public holidays
    of their country and subdivision (``company.holidays``, or theirs from users.csv)."""

    tz: ZoneInfo
    start: time
    end: time
    days: frozenset[int]  # 0 = Monday
    holidays: Holidays | None = None

    @classmethod
    def for_user(
        cls,
        settings: Settings,
        timezone: str | None,
        working_hours: str | None,
        holidays: str | None = None,
    ) -> WorkingTime:
        start, end = parse_working_hours(working_hours or settings.company.working_hours)
        days = frozenset(WEEKDAYS.index(d) for d in settings.company.working_days)
        zone = ZoneInfo(timezone or settings.company.timezone)
        return cls(zone, start, end, days, public_holidays(holidays or settings.company.holidays))

    def working(self, day: date) -> bool:
        """Whether ``day`` is a working day: a working weekday, and no public holiday."""
        return day.weekday() in self.days and (self.holidays is None or day not in self.holidays)

    def _at(self, day: datetime, clock: time) -> datetime:
        return datetime.combine(day.date(), clock, tzinfo=self.tz)

    def add_business_days(self, when: datetime, days: int) -> datetime:
        """The same clock time ``days`` working days later (weekends and public holidays
        are skipped)."""
        local = when.astimezone(self.tz)
        counted = 0
        while counted < days:
            local = datetime.combine(
                local.date() + timedelta(days=1),
                local.timetz().replace(tzinfo=None),
                tzinfo=self.tz,
            )
            if self.working(local.date()):
                counted += 1
        return local

    def next_start(self, when: datetime) -> datetime:
        """The first start of a working day after ``when``."""
        local = when.astimezone(self.tz)
        day = local
        if self.working(day.date()) and local < self._at(day, self.start):
            return self._at(day, self.start)
        while True:
            day = day + timedelta(days=1)
            if self.working(day.date()):
                return self._at(day, self.start)

    def day_end(self, when: datetime) -> datetime:
        """The end of the working day ``when`` falls in, or of the next one after it."""
        local = when.astimezone(self.tz)
        if self.working(local.date()) and local <= self._at(local, self.end):
            return self._at(local, self.end)
        day = local
        while True:
            day = day + timedelta(days=1)
            if self.working(day.date()):
                return self._at(day, self.end)


class Holidays:
    """The public holidays of one country and subdivision (the holidays library, its years
    filled in as they are asked for); one per code, shared by every user who has it."""

    def __init__(self, code: str) -> None:
        import holidays

        self.code = code
        country, _, subdivision = code.partition("-")
        self._days = holidays.country_holidays(country, subdiv=subdivision or None)

    def __contains__(self, day: date) -> bool:
        return day in self._days

    def name(self, day: date) -> str | None:
        """The holiday's name (None: no holiday)."""
        found = self._days.get(day)
        return str(found) if found else None


@functools.lru_cache(maxsize=64)
def public_holidays(code: str | None) -> Holidays | None:
    """The holidays of ``DE``, ``DE-BY``, ``US-CA`` ... (None: no holidays are kept)."""
    return Holidays(code) if code else None


def task_uid(rule: TaskRule, activity_key: str) -> str:
    """Stable across runs and machines: a retry writes the same calendar entry. The key is
    the activity's (a call list's: its user and day, ``syncd.calllist``)."""
    digest = hashlib.sha256(f"{rule}\x1f{activity_key}".encode()).hexdigest()[:24]
    return f"{TASK_UID_PREFIX}{rule}-{digest}"


def _names(contacts: tuple[tuple[int, str], ...]) -> str:
    names = [name for _, name in contacts]
    if len(names) <= 2:
        return " and ".join(names)
    return f"{names[0]}, {names[1]} and {len(names) - 2} more"


def _describe(c: Candidate, what: str) -> str:
    lines = [what, f"Subject: {c.subject or '(no subject)'}"]
    if c.opportunity:
        lines.append(f"Opportunity: {c.opportunity}")
    lines.append(f"Activity #{c.activity_id} in the CRM (syncd activities).")
    return "\n".join(lines)


def plan(
    candidates: Iterable[Candidate],
    settings: Settings,
    working: Mapping[int, WorkingTime],
    existing: Mapping[str, TaskStatus],
    now: datetime,
    existing_deals: Mapping[str, int | None] | None = None,
) -> list[TaskPlan]:
    """Decide new tasks and status changes. ``existing`` maps task uid -> current status,
    ``existing_deals`` task uid -> its opportunity: an open task whose activity moved to
    another deal (its conversation was settled again) is rewritten with the new deal."""
    planner = _Planner(settings.followups, existing, existing_deals or {}, now)
    plans: list[TaskPlan] = []
    for c in candidates:
        wt = _working_time(c, working, now)
        task = planner.plan(c, wt) if wt is not None else None
        if task is not None:
            plans.append(task)
    return plans


def _working_time(
    c: Candidate, working: Mapping[int, WorkingTime], now: datetime
) -> WorkingTime | None:
    """The working time of the candidate's owner; None when no rule applies to it (no
    owner, no contact, or a time no calendar arithmetic should meet: stored before the
    range check)."""
    if c.owner_id is None or not c.contacts or c.owner_id not in working:
        return None
    if not (EARLIEST <= c.occurred_at <= latest(now)) or (
        c.ends_at is not None and c.ends_at > latest(now)
    ):
        return None
    return working[c.owner_id]


@dataclass(frozen=True)
class _Planner:
    """The rules as one run of :func:`plan` applies them to each candidate."""

    rules: FollowupSettings
    existing: Mapping[str, TaskStatus]
    deals: Mapping[str, int | None]
    now: datetime

    @property
    def since(self) -> datetime:
        return self.now - timedelta(days=self.rules.lookback_days)

    def plan(self, c: Candidate, wt: WorkingTime) -> TaskPlan | None:
        if c.kind == "email" and self.rules.no_reply.enabled:
            return self._no_reply(c, wt)
        if c.kind == "meeting" and self.rules.meeting_notes.enabled and c.ends_at is not None:
            return self._meeting_notes(c, c.ends_at, wt)
        return None

    def _no_reply(self, c: Candidate, wt: WorkingTime) -> TaskPlan | None:
        uid = task_uid(RULE_NO_REPLY, c.activity_key)
        deadline = wt.add_business_days(c.occurred_at, self.rules.no_reply.business_days)
        if c.replied_at is not None:
            if self.existing.get(uid) == "open":
                return _task(c, uid, RULE_NO_REPLY, "done", "replied", wt, deadline)
            return None
        if self._create_or_move(uid, c, self.now >= deadline and c.occurred_at >= self.since):
            return _task(c, uid, RULE_NO_REPLY, "open", None, wt, deadline)
        return None

    def _meeting_notes(self, c: Candidate, ends_at: datetime, wt: WorkingTime) -> TaskPlan | None:
        uid = task_uid(RULE_MEETING_NOTES, c.activity_key)
        if c.status == "cancelled":
            if self.existing.get(uid) == "open":
                return _task(
                    c, uid, RULE_MEETING_NOTES, "cancelled", "meeting cancelled", wt, ends_at
                )
            return None
        if self._create_or_move(uid, c, self.now >= ends_at and c.occurred_at >= self.since):
            return _task(c, uid, RULE_MEETING_NOTES, "open", None, wt, ends_at)
        return None

    def _create_or_move(self, uid: str, c: Candidate, due: bool) -> bool:
        """A new task whose time has come, or an open one whose activity changed deal."""
        if uid not in self.existing:
            return due
        return self.existing[uid] == "open" and self.deals.get(uid) != c.opportunity_id


def _task(
    c: Candidate,
    uid: str,
    rule: TaskRule,
    status: TaskStatus,
    resolution: TaskResolution | None,
    wt: WorkingTime,
    anchor: datetime,
) -> TaskPlan:
    names = _names(c.contacts)
    if rule == RULE_NO_REPLY:
        title = f"Follow up with {names}: {c.subject or '(no subject)'}"
        what = f"No reply from {names} since your email of {shown(c.occurred_at, wt.tz)}."
        due = wt.next_start(anchor)
    else:
        title = f"Send notes and next steps: {c.subject or '(no subject)'}"
        what = f"Meeting with {names} ended {shown(c.ends_at or c.occurred_at, wt.tz)}."
        due = wt.day_end(anchor)
    return TaskPlan(
        uid=uid,
        rule=rule,
        user_id=c.owner_id or 0,
        activity_id=c.activity_id,
        contact_id=c.contacts[0][0] if c.contacts else None,
        opportunity_id=c.opportunity_id,
        title=title,
        description=_describe(c, what),
        due=due,
        status=status,
        resolution=resolution,
    )
