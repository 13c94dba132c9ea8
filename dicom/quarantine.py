"""Objects the gateway could not file, kept with the reason, for the operator
(``yilian dicom quarantine list|show|retry``). Nothing a sender gave us is dropped."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, update

from dicom.storage import ObjectStore
from records import ids
from records.schema import dicom_quarantine

log = logging.getLogger(__name__)

QUARANTINED = "quarantined"
RELEASED = "released"  # filed by a retry


def put(
    engine: Engine,
    store: ObjectStore,
    path: Path | None,
    *,
    origin: str,
    calling_ae: str | None,
    peer: str | None,
    sop_uid: str | None,
    sop_class: str | None,
    reason: str,
) -> str:
    """Keep the object at ``path`` (moved) with ``reason``; its quarantine id."""
    qid = ids.new_id()
    key = None
    size = 0
    if path is not None and path.exists():
        key = f"quarantine/{qid}.dcm"
        size = path.stat().st_size
        store.put_file(key, path)
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            dicom_quarantine.insert().values(
                id=qid,
                received=now,
                calling_ae=calling_ae,
                peer=peer,
                origin=origin,
                sop_uid=sop_uid,
                sop_class=sop_class,
                reason=reason[:2000],
                status=QUARANTINED,
                storage_key=key,
                size=size,
                attempts=1,
                updated=now,
            )
        )
    return qid


def entries(engine: Engine, *, status: str | None = QUARANTINED, limit: int = 100) -> list[Any]:
    query = select(dicom_quarantine).order_by(dicom_quarantine.c.received.desc()).limit(limit)
    if status:
        query = query.where(dicom_quarantine.c.status == status)
    with engine.connect() as conn:
        return list(conn.execute(query))


def get(engine: Engine, qid: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(dicom_quarantine).where(dicom_quarantine.c.id == qid)).first()


def settle(engine: Engine, qid: str, *, released: bool, reason: str | None = None) -> None:
    """After a retry: released (filed), or still quarantined with the new reason."""
    values: dict[str, Any] = {
        "attempts": dicom_quarantine.c.attempts + 1,
        "updated": dt.datetime.now(dt.UTC),
    }
    if released:
        values["status"] = RELEASED
    if reason:
        values["reason"] = reason[:2000]
    with engine.begin() as conn:
        conn.execute(update(dicom_quarantine).where(dicom_quarantine.c.id == qid).values(**values))
