"""The one grammar of the ids callers name: a user id (a token's subject, a
request's `user_id`, the user part of a wallet's account id). ASCII only:
no separator of the keys (`:`, `/`, `|`), no space, no look-alike letter,
no invisible or bidirectional control, so an id reads and compares the same
in a log, a database and an operator's terminal."""

from __future__ import annotations

import re

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
