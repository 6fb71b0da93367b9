"""``kind = "memory"``: mail, meetings and tasks held in memory, for pipeline tests.

A :class:`MemoryWorld` holds, per mailbox name, its sources (source name -> items in the
order the provider would deliver them) and the tasks written to its calendar. A source
delivers its items from the cursor (how many it has delivered) in batches of
``batch_size``, in exactly the order given, so a test chooses any order, folder split,
batch cut and pass cut it likes; ``fault`` makes reading raise, as a provider outage does.
It needs no server and no disk: the pipeline, matching and crash-safety tests use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic

from syncd.connectors.base import CalendarSource, MailboxSpec, MailSource, TaskWriter
from syncd.items import Batch, Cursor, MailItem, MeetingItem, T, TaskItem


@dataclass
class MemoryMailbox:
    mail: dict[str, list[MailItem]] = field(default_factory=dict)  # source -> items
    calendar: dict[str, list[MeetingItem]] = field(default_factory=dict)
    tasks: dict[str, TaskItem] = field(default_factory=dict)  # written, by uid
    batch_size: int = 100
    fault: Exception | None = None  # raised by every read while set
    writer_fault: Exception | None = None  # raised by every task write while set


@dataclass
class MemoryWorld:
    mailboxes: dict[str, MemoryMailbox] = field(default_factory=dict)

    def mailbox(self, name: str) -> MemoryMailbox:
        return self.mailboxes.setdefault(name, MemoryMailbox())

    def connector(self, spec: MailboxSpec) -> MemoryConnector:
        return MemoryConnector(self.mailbox(spec.name))


class _Source(Generic[T]):
    def __init__(self, name: str, box: MemoryMailbox, items: list[T]) -> None:
        self.name = name
        self.box = box
        self.items: list[T] = items

    def changes(self, cursor: Cursor | None) -> Iterator[Batch[T]]:
        start = int(cursor.value) if cursor else 0
        size = max(1, self.box.batch_size)
        for at in range(start, len(self.items), size):
            if self.box.fault is not None:
                raise self.box.fault
            end = min(at + size, len(self.items))
            yield Batch(tuple(self.items[at:end]), Cursor(str(end)))


class _Writer:
    def __init__(self, box: MemoryMailbox) -> None:
        self.box = box

    def put(self, task: TaskItem) -> str:
        if self.box.writer_fault is not None:
            raise self.box.writer_fault
        self.box.tasks[task.uid] = task
        return task.uid


class MemoryConnector:
    def __init__(self, box: MemoryMailbox) -> None:
        self.box = box

    def mail_sources(self) -> list[MailSource]:
        return [_Source(name, self.box, items) for name, items in self.box.mail.items()]

    def calendar_sources(self) -> list[CalendarSource]:
        return [_Source(name, self.box, items) for name, items in self.box.calendar.items()]

    def task_writer(self) -> TaskWriter | None:
        return _Writer(self.box)

    def close(self) -> None:
        pass


_WORLDS: dict[str, MemoryWorld] = {}


def world(name: str = "default") -> MemoryWorld:
    """The in-process world ``name`` (made empty on first use)."""
    return _WORLDS.setdefault(name, MemoryWorld())


def open_memory(spec: MailboxSpec) -> MemoryConnector:
    """The registry's factory: the mailbox ``spec.name`` of the world its settings name."""
    return world(getattr(spec.settings, "world", "default")).connector(spec)
