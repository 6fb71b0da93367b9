"""``kind = "memory"``: mail, meetings and tasks held in memory, for pipeline tests.

It was added the way any provider is: this package and one line in the registry. Its
mailboxes live in a :class:`~.connector.MemoryWorld` named by the ``world`` setting
(``syncd.connectors.memory.connector.world(name)``), in this process only."""

from __future__ import annotations

from pydantic import Field

from syncd.connectors.kind import Kind, KindSettings, option


class MemorySettings(KindSettings):
    world: str = Field(
        "default", json_schema_extra=option(None, "the in-process world that holds the mail")
    )


KIND = Kind(
    name="memory",
    summary="mail in memory (tests only)",
    settings=MemorySettings,
    open="syncd.connectors.memory.connector:open_memory",
    hidden=True,
)
