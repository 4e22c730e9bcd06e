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
    events, logs and terminals, where such a character hides or reorders text."""
    for ch in name:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            return f"U+{ord(ch):04X}"
    return None
