"""What is never logged: private items, bulk mail, auto-replies, blocklisted participants,
internal-only conversations, provider folders/labels the admin excludes, and conversations
with no CRM participant. Pure: an item, its match and the index in, an :class:`Excluded`
(its reason, and what exactly) or None out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from syncd.items import ExclusionReason, Item, MailItem, conversation_keys, thread_mark
from syncd.matching.matcher import CrmIndex, Match

_BULK_PRECEDENCE = {"bulk", "list", "junk"}


@dataclass(frozen=True)
class Excluded:
    """Why an item is not logged: the reason ``syncd sync`` counts, and what exactly
    (``str()`` gives both: ``"bulk: Precedence junk"``)."""

    reason: ExclusionReason
    detail: str | None = None

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


def label_hit(item: Item, names: Iterable[str]) -> str | None:
    """The first of the item's labels (Gmail labels, Outlook categories) among ``names``."""
    wanted = {name.lower() for name in names}
    return next((label for label in item.labels if label.lower() in wanted), None)


def mail_exclusion(
    item: MailItem, excluded_labels: Iterable[str], forced: bool = False
) -> Excluded | None:
    """Reasons that need only the message itself (checked before matching). A label the
    admin excludes always wins; a forced item (see ``exclusions.force_labels``) skips the
    bulk and auto-reply checks."""
    hit = label_hit(item, excluded_labels)
    if hit:
        return Excluded("excluded label", hit)
    if forced:
        return None
    if item.list_id:
        return Excluded("bulk", "mailing list (List-Id)")
    if item.precedence in _BULK_PRECEDENCE:
        return Excluded("bulk", f"Precedence {item.precedence}")
    if item.auto_submitted and item.auto_submitted.split(";")[0].strip() != "no":
        return Excluded("auto-reply", f"Auto-Submitted {item.auto_submitted}")
    if item.autoreply_header:
        return Excluded("auto-reply", f"{item.autoreply_header} header")
    return None


def exclusion(item: Item, match: Match, index: CrmIndex, forced: bool = False) -> Excluded | None:
    """Reasons that need the CRM (checked after matching). Private and blocklisted items
    are never logged, forced or not; a forced item is logged even when internal-only or
    without a CRM participant. An item an admin deleted is never logged again."""
    if index.dropped:
        if item.key in index.dropped:
            return Excluded("deleted", "deleted by an admin (syncd activity delete)")
        if any(thread_mark(k) in index.dropped for k in conversation_keys(item)):
            return Excluded("nocrm", "its conversation was removed with #nocrm (a dropbox)")
    if item.private:
        return Excluded("private")
    blocked = next((p.address for p in item.participants if index.is_blocked(p.address)), None)
    if blocked:
        return Excluded("blocklisted", blocked)
    if forced:
        return None
    if match.direction == "internal":
        return Excluded("internal-only")
    if not match.has_crm_participant:
        return Excluded("no CRM participant")
    return None
