"""How a kind's models become the command line and the documentation: every field of a
kind's settings or sign-in model is a ``mailbox add`` option (:func:`options`, read by
``syncd/cli/mailbox.py``), and every stored setting a line of the example config
(:func:`settings_doc`, kept in step by ``tests/test_kinds.py``)."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from syncd.connectors.kind import Kind, KindSettings, option_name


@dataclass(frozen=True)
class OptionSpec:
    """One command-line option as a field of a model defines it."""

    field: str
    flag: str  # --host
    help: str
    hidden: bool
    kind: Literal["text", "int", "float", "bool", "path", "date", "choice"]
    multiple: bool
    choices: tuple[str, ...] = ()


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """The type under ``X | None`` and ``list[X]``, and whether it was a list."""
    multiple = False
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0] if len(args) == 1 else str
        elif origin in (list, tuple):
            multiple = True
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation, multiple


def options(model: type[BaseModel]) -> list[OptionSpec]:
    """The command-line options of a settings or sign-in model, in field order."""
    found = []
    for name, info in model.model_fields.items():
        flag = option_name(model, name)
        if not flag:
            continue
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        base, multiple = _base_type(info.annotation)
        choices: tuple[str, ...] = ()
        kind: Any
        if typing.get_origin(base) is Literal:
            kind, choices = "choice", tuple(str(c) for c in typing.get_args(base))
        elif base is bool:
            kind = "bool"
        elif base is int:
            kind = "int"
        elif base is float:
            kind = "float"
        elif base is Path:
            kind = "path"
        elif base is date:
            kind = "date"
        else:
            kind = "text"
        found.append(
            OptionSpec(
                field=name,
                flag=flag,
                help=str(extra.get("help") or info.description or ""),
                hidden=bool(extra.get("hidden")),
                kind=kind,
                multiple=multiple,
                choices=choices,
            )
        )
    return found


def settings_doc(kind: Kind) -> list[str]:
    """The kind's stored settings as the example config documents them: one comment line
    each, ``# <kind>.<key> = <default>: <help>`` (the common keys are documented once)."""
    lines = []
    common = KindSettings.model_fields
    for name, info in kind.settings.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        shared = kind.settings is not KindSettings and name in common
        if shared and extra == common[name].json_schema_extra:
            continue  # documented once, for every kind
        flag = extra.get("option", "--" + name.replace("_", "-"))
        default = (
            "(required)"
            if info.is_required()
            else json.dumps(info.get_default(call_default_factory=True))
        )
        how = f" [{flag}]" if flag and not extra.get("hidden") else ""
        text = str(extra.get("help") or "").removeprefix(f"{kind.name}: ")
        lines.append(f"# {kind.name}.{name} = {default}{how}: {text}".rstrip(": ."))
    return lines
