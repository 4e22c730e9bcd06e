"""The one grammar of the ids callers name: a user id (a token's subject, a
request's `user_id`, the user part of a wallet's account id). ASCII only:
no separator of the keys (`:`, `/`, `|`), no space, no look-alike letter,
no invisible or bidirectional control, so an id reads and compares the same
in a log, a database and an operator's terminal. And the one rule of the
names people give things (a key's label, an org's name)."""

from __future__ import annotations

import re
import unicodedata

USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+\-]{0,127}")
USER_ID_RULE = "1 to 128 characters of letters, digits and ._@+- (starting with a letter or digit)"


# An organisation's id, which also names its wallet: never a user's (a user
# token or a request's user_id of this form would reach the org's wallet
# without being a member).
ORG_ID = re.compile(r"org_[0-9a-f]{32}")


def is_user_id(value: object) -> bool:
    return isinstance(value, str) and USER_ID.fullmatch(value) is not None and not is_org_id(value)


def is_org_id(value: object) -> bool:
    return isinstance(value, str) and ORG_ID.fullmatch(value) is not None


def hidden_char(name: str) -> str | None:
    """The first character of a name that does not show as itself (`U+202E`),
    or None: a control (C0, C1, line and paragraph separators) or a format
    character (Unicode category Cf: the bidirectional overrides, embeddings and
    isolates, zero-width spaces and joiners, the BOM). A name is shown in
    events, logs and terminals, where such a character hides or reorders text.
    A zero-width joiner between two pictographs is an emoji sequence (a
    technologist, a family): it shows as one picture, and is kept."""
    for i, ch in enumerate(name):
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") and not (ch == ZWJ and _joins_pictographs(name, i)):
            return f"U+{ord(ch):04X}"
    return None


ZWJ = "\u200d"
# What may sit between a pictograph and the joiner after it: the emoji
# presentation selector and the five skin tones.
_EMOJI_MODIFIERS = frozenset("\ufe0f\U0001f3fb\U0001f3fc\U0001f3fd\U0001f3fe\U0001f3ff")


def _joins_pictographs(name: str, i: int) -> bool:
    before = i - 1
    while before >= 0 and name[before] in _EMOJI_MODIFIERS:
        before -= 1
    return (
        before >= 0 and i + 1 < len(name)
        and unicodedata.category(name[before]) == "So" and unicodedata.category(name[i + 1]) == "So"
    )
