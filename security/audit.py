"""The audit chain: each record's hash covers its content and the previous record's hash.

Storage lives in records/ (``records.audit_log``); this module only defines what is hashed
and how a sequence of records is checked, so the rule exists once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    recorded: datetime  # UTC
    actor: str
    role: str
    organization: str | None
    action: str
    resources: tuple[str, ...]
    patient: str | None
    outcome: str
    detail: str | None
    source: str | None


def canonical(entry: AuditEntry) -> bytes:
    body = {
        "seq": entry.seq,
        "recorded": entry.recorded.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor": entry.actor,
        "role": entry.role,
        "organization": entry.organization,
        "action": entry.action,
        "resources": list(entry.resources),
        "patient": entry.patient,
        "outcome": entry.outcome,
        "detail": entry.detail,
        "source": entry.source,
    }
    return json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def chain_hash(prev_hash: str, entry: AuditEntry) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(entry)).hexdigest()


@dataclass(frozen=True)
class ChainBreak:
    seq: int
    reason: str


def verify_chain(
    rows: Iterable[tuple[AuditEntry, str, str]], head: tuple[int, str] | None
) -> ChainBreak | None:
    """Check rows (entry, prev_hash, hash) in seq order; return the first break or None.

    Detects a changed row (hash mismatch), a removed or reordered row (seq gap or a
    prev_hash that is not the previous row's hash) and a truncated tail (head mismatch).
    """
    expected_seq = 1
    prev = GENESIS
    for entry, prev_hash, stored in rows:
        if entry.seq != expected_seq:
            return ChainBreak(
                entry.seq, f"expected record {expected_seq} here (removed or reordered)"
            )
        if prev_hash != prev:
            return ChainBreak(entry.seq, "previous-hash link does not match the record before it")
        if chain_hash(prev_hash, entry) != stored:
            return ChainBreak(entry.seq, "content does not match its hash (record altered)")
        prev = stored
        expected_seq += 1
    if head is not None:
        head_seq, head_hash = head
        if head_seq != expected_seq - 1 or head_hash != prev:
            return ChainBreak(
                expected_seq, f"chain ends at record {expected_seq - 1} but head says {head_seq}"
            )
    return None
