"""Microsoft Graph's entity schema, read from Microsoft's own generated models.

The ``msgraph-sdk`` package (a test dependency) holds one class per Graph type, generated from
Graph's published metadata: ``msgraph.generated.models.message.Message`` and so on. Each
class's ``get_field_deserializers()`` maps every wire property name of the type, inherited
ones included, to a small function that reads it from a kiota ``ParseNode``. Calling each of
those functions with :class:`_Probe` (which records which ``get_…_value`` method was called,
and with what class) tells, for every property, whether it is a primitive, an enum, a complex
type or an entity (a navigation property), whether it is a collection, and its type. Nothing
here is written by hand but the wire names of the types the emulator serves.

msgraph-sdk is imported lazily and every type is read once (cached): importing this module
is cheap, the first lookup costs about a second.

Validation of OData query options and request bodies against that schema is here too, as
pure functions that raise :class:`SchemaError`; the emulator turns that into Graph's error
shape. Property names match whatever their case, as in Graph's own examples
(``ep/Id``, ``ep/Value`` in singlevaluelegacyextendedproperty-get.md); the canonical spelling
is the generated models'.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

MODELS = "msgraph.generated.models"
# OData keywords and literals that are not property names in a $filter/$orderby expression
KEYWORDS = frozenset(
    {"eq", "ne", "gt", "ge", "lt", "le", "and", "or", "not", "has", "in", "add", "sub", "mul"}
    | {"div", "mod", "true", "false", "null", "asc", "desc"}
)
LAMBDAS = ("any", "all")
_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_TOKENS = re.compile(
    rf"""
      (?P<string>'(?:[^']|'')*')
    | (?P<guid>{_GUID})
    | (?P<number>[-+]?\d[\w:.+-]*)
    | (?P<path>[A-Za-z_$@][\w.]*(?:/[A-Za-z_$@][\w.]*)*)
    | (?P<punct>[(),:;/])
    | (?P<space>\s+)
    | (?P<other>.)
    """,
    re.VERBOSE,
)


class SchemaError(ValueError):
    """A name the type does not have (``reason`` "unknown"), or a property that cannot be
    expanded (``reason`` "not-navigation"); ``where`` is select/expand/filter/orderby/body."""

    def __init__(self, type_name: str, prop: str, where: str, reason: str = "unknown") -> None:
        super().__init__(f"{where}: {prop!r} on {type_name}: {reason}")
        self.type_name, self.prop, self.where, self.reason = type_name, prop, where, reason


@dataclass(frozen=True)
class Property:
    name: str
    kind: str  # primitive | enum | complex | entity
    collection: bool
    target: str | None = None  # the wire name of a complex or entity type

    @property
    def navigation(self) -> bool:
        return self.kind == "entity"


@dataclass(frozen=True)
class GraphType:
    name: str  # the wire name: "message", "todoTask", "itemBody"
    entity: bool  # an entity type (has an id, can be a navigation target) or a complex type
    properties: dict[str, Property]

    def get(self, name: str) -> Property | None:
        found = self.properties.get(name)
        if found is None:
            found = next((p for k, p in self.properties.items() if k.lower() == name.lower()), None)
        return found


class _Probe:
    """Stands in for kiota's ParseNode: remembers the getter a field deserializer calls."""

    def __init__(self) -> None:
        self.method = ""
        self.argument: Any = None

    def __getattr__(self, method: str) -> Any:
        if not method.startswith("get_"):
            raise AttributeError(method)

        def record(*args: Any) -> None:
            self.method, self.argument = method, args[0] if args else None

        return record


def _camel(class_name: str) -> str:
    return class_name[:1].lower() + class_name[1:]


def _module(type_name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type_name).lower()


@cache
def _entity_base() -> type:
    return importlib.import_module(f"{MODELS}.entity").Entity


@cache
def _model(type_name: str) -> type:
    """The generated class of a wire type name (``todoTask`` -> ``TodoTask``)."""
    try:
        module = importlib.import_module(f"{MODELS}.{_module(type_name)}")
        cls = getattr(module, type_name[:1].upper() + type_name[1:])
    except (ImportError, AttributeError):
        raise KeyError(type_name) from None
    return cls


@cache
def graph_type(type_name: str) -> GraphType:
    """The schema of a Graph type by its wire name (``message``, ``itemBody``…); KeyError for
    a type msgraph-sdk does not know."""
    cls = _model(type_name)
    instance = cls()
    properties: dict[str, Property] = {}
    for name, read in instance.get_field_deserializers().items():
        if name.startswith("@"):  # @odata.type: an annotation, not a property
            continue
        probe = _Probe()
        read(probe)
        method, argument = probe.method, probe.argument
        collection = method.startswith("get_collection_of_")
        if method.endswith("object_value") or method.endswith("object_values"):
            kind = "entity" if issubclass(argument, _entity_base()) else "complex"
            properties[name] = Property(name, kind, collection, _camel(argument.__name__))
        elif "enum" in method:
            properties[name] = Property(name, "enum", collection, _camel(argument.__name__))
        else:
            properties[name] = Property(name, "primitive", collection)
    return GraphType(type_name, issubclass(cls, _entity_base()), properties)


# --- query options -------------------------------------------------------------------------


def _path(gtype: GraphType, path: str, where: str) -> Property:
    """Resolve ``a/b/c`` from ``gtype``; raises SchemaError naming the first unknown segment."""
    current: GraphType | None = gtype
    found: Property | None = None
    for segment in path.split("/"):
        if current is None:
            raise SchemaError(found.target if found and found.target else "Edm", segment, where)
        found = current.get(segment)
        if found is None:
            raise SchemaError(current.name, segment, where)
        current = graph_type(found.target) if found.kind in ("complex", "entity") else None
    assert found is not None
    return found


def split_top(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside parentheses and quotes."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, char in enumerate(text):
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and char == separator:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def check_select(type_name: str, select: str | None) -> list[str]:
    """``$select``: every name must be a property of the type; returns the names as the
    schema spells them."""
    gtype = graph_type(type_name)
    names = []
    for name in (s.strip() for s in (select or "").split(",")):
        if name == "*":
            names.append(name)
        elif name:
            prop = _path(gtype, name, "select")
            names.append(prop.name if "/" not in name else name)
    return names


@dataclass(frozen=True)
class Expand:
    name: str
    target: str  # the navigation property's entity type
    options: dict[str, str]  # its nested $select/$filter/$top/$expand


def check_expand(type_name: str, expand: str | None) -> list[Expand]:
    """``$expand=a,b($filter=…;$select=…)``: each must be a navigation property of the type;
    nested options are checked against the expanded type."""
    gtype = graph_type(type_name)
    found: list[Expand] = []
    for item in split_top(expand or "", ","):
        m = re.fullmatch(r"([^()\s]+)\s*(?:\((.*)\))?", item, re.DOTALL)
        if not m:
            raise SchemaError(type_name, item, "expand")
        name, inner = m.group(1), m.group(2)
        prop = gtype.get(name)
        if prop is None:
            raise SchemaError(type_name, name, "expand")
        if not prop.navigation or prop.target is None:
            raise SchemaError(type_name, name, "expand", "not-navigation")
        options: dict[str, str] = {}
        for option in split_top(inner or "", ";"):
            key, _, value = option.partition("=")
            options[key.strip()] = value.strip()
        check_query(prop.target, options)
        found.append(Expand(prop.name, prop.target, options))
    return found


def _filter_tokens(expression: str) -> list[tuple[str, str | None]]:
    """(path, lambda variable it declares or None) for each property path of a filter."""
    tokens = [
        (m.lastgroup, m.group())
        for m in _TOKENS.finditer(expression)
        if m.lastgroup not in ("space", None)
    ]
    out: list[tuple[str, str | None]] = []
    for i, (kind, text) in enumerate(tokens):
        if kind != "path":
            continue
        after = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        head, _, last = text.rpartition("/")
        if after == "(" and last.lower() in LAMBDAS and head:
            # coll/any(v: …): the collection is a path, v is bound to its element type
            variable = tokens[i + 2][1] if i + 3 < len(tokens) and tokens[i + 3][1] == ":" else None
            out.append((head, variable))
            continue
        if after == "(":  # a function: contains(, startswith(, cast(
            continue
        if after == ":":  # a lambda variable's declaration
            continue
        if text.lower() in KEYWORDS or "." in text.split("/")[0] or text.startswith("$"):
            continue  # keywords, Edm.Int32 / microsoft.graph.x type names, $it
        out.append((text, None))
    return out


def check_filter(type_name: str, expression: str | None, where: str = "filter") -> None:
    """``$filter``: every property path must exist on the type (or on the element type of a
    lambda's collection, for paths that start with its variable)."""
    gtype = graph_type(type_name)
    variables: dict[str, Property] = {}
    for path, declares in _filter_tokens(expression or ""):
        first, _, rest = path.partition("/")
        if first in variables:
            bound = variables[first]
            if rest:
                if bound.target is None or bound.kind == "enum":
                    raise SchemaError(type_name, rest.split("/")[0], where)
                _path(graph_type(bound.target), rest, where)
            continue
        prop = _path(gtype, path, where)
        if declares:
            variables[declares] = prop


def check_orderby(type_name: str, orderby: str | None) -> list[tuple[str, bool]]:
    """``$orderby=a desc,b``: every path must exist; returns (path, descending)."""
    gtype = graph_type(type_name)
    out = []
    for item in split_top(orderby or "", ","):
        path, _, direction = item.partition(" ")
        _path(gtype, path.strip(), "orderby")
        out.append((path.strip(), direction.strip().lower() == "desc"))
    return out


def check_query(type_name: str, params: dict[str, str]) -> None:
    """Every property named by $select, $expand, $filter and $orderby exists on the type."""
    check_select(type_name, params.get("$select"))
    check_expand(type_name, params.get("$expand"))
    check_filter(type_name, params.get("$filter"))
    check_orderby(type_name, params.get("$orderby"))


# --- request bodies ------------------------------------------------------------------------


def _derived(declared: str, annotation: Any) -> str:
    """The type an ``@odata.type`` annotation names, if it is ``declared`` or derives from it
    (e.g. ``#microsoft.graph.fileAttachment`` for an ``attachment``)."""
    if not isinstance(annotation, str):
        return declared
    name = annotation.removeprefix("#").removeprefix("microsoft.graph.")
    try:
        return name if issubclass(_model(name), _model(declared)) else declared
    except KeyError:
        return declared


def check_body(type_name: str, payload: Any) -> None:
    """A POST/PATCH body: every property, at any depth of complex and entity values, must be
    one the type has. Instance annotations (``@odata.type``, ``x@odata.bind``) are allowed."""
    if not isinstance(payload, dict):
        return
    gtype = graph_type(_derived(type_name, payload.get("@odata.type")))
    for key, value in payload.items():
        if "@" in key:
            continue
        prop = gtype.get(key)
        if prop is None:
            raise SchemaError(gtype.name, key, "body")
        if prop.target is None or prop.kind == "enum" or value is None:
            continue
        for element in value if prop.collection and isinstance(value, list) else [value]:
            check_body(prop.target, element)
