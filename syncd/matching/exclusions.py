"""What is never logged: private items, bulk mail, auto-replies, blocklisted participants,
internal-only conversations, provider folders/labels the admin excludes, and conversations
with no CRM participant. Pure: an item, its match and the index in, a reason or None out.
"""

from __future__ import annotations

from collections.abc import Iterable

from syncd.items import Item, MailItem
from syncd.matching.matcher import CrmIndex, Match

_BULK_PRECEDENCE = {"bulk", "list", "junk"}


def label_hit(item: Item, names: Iterable[str]) -> str | None:
    """The first of the item's labels (Gmail labels, Outlook categories) among ``names``."""
    wanted = {name.lower() for name in names}
    return next((label for label in item.labels if label.lower() in wanted), None)


def mail_exclusion(
    item: MailItem, excluded_labels: Iterable[str], forced: bool = False
) -> str | None:
    """Reasons that need only the message itself (checked before matching). A label the
    admin excludes always wins; a forced item (see ``exclusions.force_labels``) skips the
    bulk and auto-reply checks."""
    hit = label_hit(item, excluded_labels)
    if hit:
        return f"excluded label: {hit}"
    if forced:
        return None
    if item.list_id:
        return "bulk: mailing list (List-Id)"
    if item.precedence in _BULK_PRECEDENCE:
        return f"bulk: Precedence {item.precedence}"
    if item.auto_submitted and item.auto_submitted.split(";")[0].strip() != "no":
        return f"auto-reply: Auto-Submitted {item.auto_submitted}"
    if item.autoreply_header:
        return f"auto-reply: {item.autoreply_header} header"
    return None


def exclusion(item: Item, match: Match, index: CrmIndex, forced: bool = False) -> str | None:
    """Reasons that need the CRM (checked after matching). Private and blocklisted items
    are never logged, forced or not; a forced item is logged even when internal-only or
    without a CRM participant."""
    if item.private:
        return "private"
    blocked = next((p.address for p in item.participants if index.is_blocked(p.address)), None)
    if blocked:
        return f"blocklisted: {blocked}"
    if forced:
        return None
    if match.direction == "internal":
        return "internal-only"
    if not match.has_crm_participant:
        return "no CRM participant"
    return None
