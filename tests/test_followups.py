"""Follow-up rules, pure: working time arithmetic and what each rule decides."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from syncd.config import Settings
from syncd.crm.queries import Candidate
from syncd.followups import RULE_NO_REPLY, WorkingTime, plan, task_uid

MADRID = ZoneInfo("Europe/Madrid")
WT = WorkingTime.for_user(Settings(), "Europe/Madrid", "09:00-17:30")


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=MADRID)


def test_business_days_skip_weekends():
    friday = at(2026, 11, 20, 14, 0)
    assert WT.add_business_days(friday, 3) == at(2026, 11, 25, 14, 0)  # Wednesday
    assert WT.next_start(at(2026, 11, 25, 14, 0)) == at(2026, 11, 26, 9, 0)
    assert WT.next_start(at(2026, 11, 25, 7, 0)) == at(2026, 11, 25, 9, 0)
    assert WT.next_start(friday) == at(2026, 11, 23, 9, 0)  # Monday
    assert WT.day_end(at(2026, 11, 20, 11, 0)) == at(2026, 11, 20, 17, 30)
    assert WT.day_end(at(2026, 11, 20, 18, 0)) == at(2026, 11, 23, 17, 30)
    assert WT.day_end(at(2026, 11, 22, 11, 0)) == at(2026, 11, 23, 17, 30)  # Sunday


def email(sent: datetime, replied: datetime | None = None) -> Candidate:
    return Candidate(
        activity_id=1,
        activity_key="mid:1@x",
        kind="email",
        subject="Offer",
        occurred_at=sent,
        ends_at=None,
        status="confirmed",
        direction="outbound",
        owner_id=1,
        contacts=((5, "Carla"),),
        opportunity_id=None,
        opportunity=None,
        replied_at=replied,
    )


def test_no_reply_creates_a_task_only_after_the_deadline_and_in_the_window():
    sent = at(2026, 11, 16, 10, 0)  # Monday
    s = Settings()
    assert plan([email(sent)], s, {1: WT}, {}, at(2026, 11, 19, 9, 59)) == []
    (task,) = plan([email(sent)], s, {1: WT}, {}, at(2026, 11, 19, 10, 0))
    assert task.title == "Follow up with Carla: Offer" and task.status == "open"
    assert task.due == at(2026, 11, 20, 9, 0) and task.uid == task_uid(RULE_NO_REPLY, "mid:1@x")
    # a first sync of old mail floods nobody's calendar
    assert plan([email(sent)], s, {1: WT}, {}, sent + timedelta(days=30)) == []


def test_a_reply_closes_an_open_task_and_prevents_a_new_one():
    sent = at(2026, 11, 16, 10, 0)
    s = Settings()
    now = at(2026, 11, 25, 12, 0)
    replied = email(sent, replied=at(2026, 11, 24, 8, 0).astimezone(UTC))
    assert plan([replied], s, {1: WT}, {}, now) == []
    uid = task_uid(RULE_NO_REPLY, "mid:1@x")
    (done,) = plan([replied], s, {1: WT}, {uid: "open"}, now)
    assert (done.status, done.resolution) == ("done", "replied")
    assert plan([replied], s, {1: WT}, {uid: "done"}, now) == []
