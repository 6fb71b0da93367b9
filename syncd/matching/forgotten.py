"""Addresses and domains an admin had forgotten (``syncd forget``), known only by digest:
the SHA-256 of ``kind:value``, so that the value itself is nowhere in the database. Pure."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Set
from typing import Literal

from syncd.matching.addresses import domain_of, normalize_address

Kind = Literal["address", "domain"]


def digest(kind: Kind, value: str) -> str:
    """What syncd keeps of a forgotten address or domain: never the value itself."""
    return hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()


def parents(domain: str) -> list[str]:
    """``eu.globex.test`` -> itself and ``globex.test``."""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(max(1, len(labels) - 1))]


def is_forgotten(address: str, digests: Set[str]) -> bool:
    """Whether an address, or its domain or a parent of it, was forgotten."""
    if not digests:
        return False
    norm = normalize_address(address)
    if digest("address", norm) in digests:
        return True
    return any(digest("domain", d) in digests for d in parents(domain_of(norm)))


_ADDRESS = re.compile(r"[\w.+'=-]+@[\w-]+(?:\.[\w-]+)+")
_DOMAIN = re.compile(r"(?<![\w@.-])[\w-]+(?:\.[\w-]+)+")


def forgotten_in(text: str, digests: Set[str]) -> set[str]:
    """The forgotten addresses and domains written in a text (an unreadable message, a
    reason quoting a header): every address-like and domain-like word checked by digest."""
    if not digests or not text:
        return set()
    found = {a for a in _ADDRESS.findall(text) if is_forgotten(a, digests)}
    found.update(
        d
        for d in _DOMAIN.findall(text)
        if any(digest("domain", p) in digests for p in parents(d.lower()))
    )
    return found
