"""Graph's OData conventions over the schema of :mod:`.schema`: ``Prefer`` headers, query
options and request bodies checked (and refused in Graph's error shape), and the properties
an answer carries (``$select``, ``$expand``, extended properties)."""

from __future__ import annotations

import re
from typing import Any

from . import schema
from .state import GraphError, Record

# Outlook-backed types: Graph relays their query errors from Exchange, which names the type
# in its own namespace ("… on type 'Microsoft.OutlookServices.Message'", PROVIDER-APIS.md,
# microsoft-graph-docs #8359); other services answer in Graph's ("… on type
# 'microsoft.graph.mailFolder'", mguessan/davmail #451 and #488)
OUTLOOK_TYPES = frozenset({"message", "event"})


def preferences(headers: Any) -> dict[str, str]:
    """``Prefer`` preferences (several headers or comma-separated) -> {name: value}."""
    found: dict[str, str] = {}
    values = headers.get_all("Prefer", []) if hasattr(headers, "get_all") else []
    if not values and headers.get("Prefer"):
        values = [headers.get("Prefer")]
    for value in values:
        for part in value.split(","):
            name, _, arg = part.strip().partition("=")
            if name:
                found[name.strip().lower()] = arg.strip().strip('"')
    return found


def schema_error(err: schema.SchemaError, root: str) -> GraphError:
    """A schema refusal in Graph's shape. Query options: "Could not find a property named 'X'
    on type 'T'." (code RequestBroker--ParseUri for Outlook types, PROVIDER-APIS.md; BadRequest
    "Parsing OData Select and Expand failed: …" elsewhere, davmail #451); expanding a
    non-navigation property: OData's "… is not a navigation property or complex property. Only
    navigation properties can be expanded."; a body property: RequestBodyRead "The property 'X'
    does not exist on type 'T'. Make sure to only use property names that are defined by the
    type or mark the type as open type." (msgraph-sdk-dotnet #450, microsoft-graph-docs #6428)."""
    outlook = root in OUTLOOK_TYPES
    qualified = (
        f"Microsoft.OutlookServices.{err.type_name[:1].upper()}{err.type_name[1:]}"
        if outlook
        else f"microsoft.graph.{err.type_name}"
    )
    if err.where == "body":
        return GraphError(
            400,
            "RequestBodyRead",
            f"The property '{err.prop}' does not exist on type '{qualified}'. Make sure to only "
            "use property names that are defined by the type or mark the type as open type.",
        )
    if err.reason == "not-navigation":
        text = (
            f"Property '{err.prop}' on type '{qualified}' is not a navigation property or "
            "complex property. Only navigation properties can be expanded."
        )
    else:
        text = f"Could not find a property named '{err.prop}' on type '{qualified}'."
    if outlook:
        return GraphError(400, "RequestBroker--ParseUri", text)
    if err.where in ("select", "expand"):
        text = "Parsing OData Select and Expand failed: " + text
    return GraphError(400, "BadRequest", text)


def check_body(type_name: str, payload: Any) -> None:
    try:
        schema.check_body(type_name, payload)
    except schema.SchemaError as err:
        raise schema_error(err, type_name) from None


def check_query(params: dict[str, str], allowed: set[str], entity: str | None = None) -> None:
    """Unsupported query options are refused, and so is any property that ``entity`` (its
    schema from msgraph-sdk's models) does not have in $select, $expand, $filter or
    $orderby, as Graph does."""
    for name in params:
        if name not in allowed:
            raise GraphError(
                400,
                "BadRequest",
                f"The query parameter '{name}' is not supported with this request.",
            )
    if entity:
        try:
            schema.check_query(entity, params)
        except schema.SchemaError as err:
            raise schema_error(err, entity) from None
        for item in schema.check_expand(entity, params.get("$expand")):
            if item.name == "singleValueExtendedProperties":
                id_filter(entity, item.options.get("$filter"))


def property_key(prop_id: str) -> tuple[str, ...]:
    """An extended property id in a comparable form. Proptag ids (``Integer 0x0036``) compare
    by type and number; in named ids the type and GUID are case-insensitive, the name is not
    ("Filtering the string name (Name) in the id of an extended property is case-sensitive",
    [MGD api-reference/v1.0/api/singlevaluelegacyextendedproperty-get.md])."""
    parts = prop_id.split()
    if len(parts) == 2 and parts[1].lower().startswith("0x"):
        try:
            return (parts[0].lower(), str(int(parts[1], 16)))
        except ValueError:
            pass
    if len(parts) >= 4 and parts[2].lower() == "id":
        try:
            return (parts[0].lower(), parts[1].lower(), "id", str(int(parts[3], 16)))
        except ValueError:
            pass
    if len(parts) >= 4:
        return (parts[0].lower(), parts[1].lower(), parts[2].lower(), " ".join(parts[3:]))
    return tuple(parts)


def echoed_id(prop_id: str) -> str:
    """The id as Graph writes it back: a proptag's number in lower-case hex without leading
    zeros, whatever was asked (``Integer 0x0036`` -> ``Integer 0x36``; a live check recorded
    in valter-araujo/outlook-mac-mcp, email size mapper)."""
    parts = prop_id.split()
    if len(parts) == 2 and parts[1].lower().startswith("0x"):
        try:
            return f"{parts[0]} 0x{int(parts[1], 16):x}"
        except ValueError:
            pass
    return prop_id


def id_filter(type_name: str, flt: str | None) -> list[str] | None:
    """The ids an extended property expansion asks for: ``$filter=id eq 'A' or id eq 'B'``,
    "currently the only way" to get one [singlevaluelegacyextendedproperty-get.md]; None
    without a filter (every property the item has)."""
    if not flt:
        return None
    terms = re.split(r"\s+or\s+", flt.strip(), flags=re.IGNORECASE)
    ids = []
    for term in terms:
        m = re.fullmatch(r"\(?\s*id\s+eq\s+'((?:[^']|'')*)'\s*\)?", term, re.IGNORECASE)
        if not m:
            raise GraphError(
                400,
                "ErrorInvalidUrlQueryFilter",
                f"An extended property of a {type_name} is expanded with a $filter of "
                "id eq '…' terms only.",
            )
        ids.append(m.group(1).replace("''", "'"))
    return ids


def selected(type_name: str, resource: dict[str, Any], query: dict[str, str]) -> list[str]:
    """The properties an answer carries: those of $select, else the stored ones (internal
    keys start with ``_``; a message's internet headers only on request [message-get.md])."""
    select = schema.check_select(type_name, query.get("$select"))
    if select and "*" not in select:
        return select
    hidden = {"internetMessageHeaders"} if type_name == "message" else set()
    return [k for k in resource if not k.startswith("_") and k not in hidden]


def expanded(type_name: str, record: Record, expand: str | None) -> dict[str, list[dict[str, Any]]]:
    """The navigation properties $expand asks for. An extended property appears only when
    the item has it ("expanded with the matching extended property"
    [singlevaluelegacyextendedproperty-get.md]); with none of them the key is left out."""
    out: dict[str, list[dict[str, Any]]] = {}
    for item in schema.check_expand(type_name, expand):
        if item.name == "singleValueExtendedProperties":
            stored = record.resource.get("_extended") or []
            wanted = id_filter(type_name, item.options.get("$filter"))
            keys = None if wanted is None else {property_key(i) for i in wanted}
            matched = [
                {"id": echoed_id(p["id"]), "value": p["value"]}
                for p in stored
                if keys is None or property_key(p["id"]) in keys
            ]
            if matched:
                out[item.name] = matched
        else:  # attachments, extensions, …: the emulator keeps none
            out[item.name] = list(record.resource.get("_" + item.name) or [])
    return out
