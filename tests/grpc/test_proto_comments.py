"""Every field, enum value and message of the billing protos carries a leading
`//` comment: reflection, `buf curl` and generated docs show nothing else.

A line-based parse: the protos keep one declaration per line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PROTO_DIR = Path(__file__).resolve().parents[2] / "protos" / "flownexus" / "billing" / "v1"
PROTOS = sorted(PROTO_DIR.glob("*.proto"))

BLOCK = re.compile(r"^(message|enum|service|oneof)\s+(\w+)\s*\{")
FIELD = re.compile(r"^(?:(?:repeated|optional)\s+)?(?:map<[\w.]+,\s*[\w.]+>|[\w.]+)\s+(\w+)\s*=\s*\d+\s*(?:\[.*\])?;")
ENUM_VALUE = re.compile(r"^(\w+)\s*=\s*-?\d+\s*(?:\[.*\])?;")


def uncommented(text: str) -> tuple[list[str], int]:
    """The declarations without a leading comment, and how many were checked."""
    missing: list[str] = []
    checked = 0
    stack: list[tuple[str, str]] = []  # (kind, name) of the open blocks
    previous = ""  # the last non-blank line
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        commented = previous.startswith("//")
        block = BLOCK.match(line)
        kind = stack[-1][0] if stack else ""
        if block:
            if block.group(1) in ("message", "enum"):
                checked += 1
                if not commented:
                    missing.append(f"{lineno}: {block.group(1)} {block.group(2)}")
            stack.append((block.group(1), block.group(2)))
            if line.endswith("}"):  # `message Empty {}`
                stack.pop()
        elif line.startswith("}"):
            if stack:
                stack.pop()
        elif kind in ("message", "oneof") and (m := FIELD.match(line)):
            checked += 1
            if not commented:
                missing.append(f"{lineno}: field {stack[-1][1]}.{m.group(1)}")
        elif kind == "enum" and (m := ENUM_VALUE.match(line)):
            checked += 1
            if not commented:
                missing.append(f"{lineno}: enum value {stack[-1][1]}.{m.group(1)}")
        previous = line
    return missing, checked


def test_all_billing_protos_are_checked() -> None:
    names = {p.name for p in PROTOS}
    assert {"balance.proto", "common.proto", "earnings.proto", "history.proto", "payments.proto",
            "refill.proto", "tier.proto", "usage.proto"} <= names


@pytest.mark.parametrize("proto", PROTOS, ids=lambda p: p.name)
def test_every_declaration_has_a_comment(proto: Path) -> None:
    missing, checked = uncommented(proto.read_text())
    assert checked > 0, f"{proto.name}: the parser found no declarations"
    assert not missing, f"{proto.name}: no leading // comment on\n" + "\n".join(missing)


def test_the_parser_finds_missing_comments() -> None:
    text = """
// A message.
message M {
  // Commented.
  string a = 1;
  repeated int64 b = 2;
  map<string, string> c = 3;
  google.protobuf.Timestamp d = 4;
}

message N {}

// An enum.
enum E {
  // Commented.
  E_UNSPECIFIED = 0;
  E_ONE = 1;
}
"""
    missing, checked = uncommented(text)
    assert [m.split(": ", 1)[1] for m in missing] == [
        "field M.b", "field M.c", "field M.d", "message N", "enum value E.E_ONE",
    ]
    assert checked == 9
