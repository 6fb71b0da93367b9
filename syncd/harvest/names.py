"""A person's name from the display names their mail carried: the one seen most often, and
split into first and last only where that is safe.

Display names are messy: ``"Smith, John"``, ``"JOHN SMITH"``, ``"john.smith@acme.test"``,
``"Sales Team"``, ``"Dr. Anna Maria van der Berg"``, ``"山田 太郎"``, or a name written by
someone else in their address book. A name is split only when it is exactly two words of
letters (``"John Smith"``) or ``"Last, First"`` with one word on each side; anything else
keeps the whole name and no split, because a wrong split is worse than none.
"""

from __future__ import annotations

import re
from collections import Counter

_NOT_A_NAME = re.compile(r"[@<>\"/\\|]|^\W*$|^(undisclosed|unknown)", re.I)
_WORD = re.compile(r"^[^\W\d_][^\W\d_'’.-]*(?:[-'’][^\W\d_]+)*$")


def clean(name: str) -> str:
    """A display name as shown: quotes and outer spaces gone, inner runs of space as one."""
    return " ".join(name.strip().strip("'\"").split())


def usable(name: str, address: str) -> bool:
    """Whether a display name can name a person: not empty, not an address, not just the
    address's local part (``carla`` for carla@...)."""
    name = clean(name)
    if not name or _NOT_A_NAME.search(name):
        return False
    return name != address.partition("@")[0]  # "carla" for carla@ is no name; "Carla" is


def best_name(names: Counter[str], address: str) -> str:
    """The usable display name seen most often (the first seen on a tie); '' when none."""
    for name, _count in names.most_common():
        if usable(name, address):
            return clean(name)
    return ""


def split_name(name: str) -> tuple[str, str] | None:
    """(first, last) when it is safe, else None."""
    name = clean(name)
    if name.count(",") == 1:
        last, first = (part.strip() for part in name.split(","))
        if _WORD.match(first) and _WORD.match(last):
            return _cased(first), _cased(last)
        return None
    words = name.split(" ")
    if len(words) == 2 and all(_WORD.match(w) for w in words):
        return _cased(words[0]), _cased(words[1])
    return None


def _cased(word: str) -> str:
    """``JOHN`` and ``john`` -> ``John``; ``McDonald`` and ``d'Arcy`` are left as written."""
    return word.capitalize() if word.isupper() or word.islower() else word
