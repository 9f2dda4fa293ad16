"""The audit log: every write and every identify/verify, with who, what, where and the outcome (never images or
embeddings), kept in the database for ``FACEDB_AUDIT_RETENTION_DAYS``."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from service import schemas
from service.db import crud
from service.db.engine import Database
from service.db.models import AuditEvent, as_utc, utcnow
from service.settings import Settings

log = logging.getLogger(__name__)


class AuditLog:
    """Records events and answers queries over them."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    def record(
        self,
        *,
        key_name: str | None,
        action: str,
        gallery: str | None,
        target: dict[str, Any],
        status: int,
        outcome: str,
        client: str | None,
    ) -> None:
        """Store one event in its own transaction (the action it describes has already committed or failed)."""
        event = AuditEvent(
            key_name=key_name,
            action=action,
            gallery=gallery,
            target=target,
            status=status,
            outcome=outcome,
            client=client,
        )
        with self.db.write() as session:
            crud.add_audit_event(session, event=event)

    def list(
        self,
        *,
        limit: int,
        cursor: int | None = None,
        action: str | None = None,
        key_name: str | None = None,
        gallery: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> schemas.AuditEventsPublic:
        """A page of events, newest first; ``cursor`` is the previous page's ``next_cursor``."""
        with self.db.read() as session:
            rows = crud.list_audit_events(
                session,
                limit=limit + 1,
                before=cursor,
                action=action,
                key_name=key_name,
                gallery=gallery,
                # SQLite compares the stored UTC times as text: a bound with another offset is converted first
                since=as_utc(since) if since is not None else None,
                until=as_utc(until) if until is not None else None,
            )
        page = rows[:limit]
        return schemas.AuditEventsPublic(
            items=[_public(e) for e in page],
            next_cursor=page[-1].id if len(rows) > limit else None,
        )

    def purge(self) -> int:
        """Delete events older than the retention; returns how many."""
        cutoff = utcnow() - timedelta(days=self.settings.audit_retention_days)
        with self.db.write() as session:
            removed = crud.purge_audit_events(session, older_than=cutoff)
        if removed:
            log.info("deleted %d audit events older than %s", removed, cutoff.isoformat())
        return removed


def _public(event: AuditEvent) -> schemas.AuditEventPublic:
    return schemas.AuditEventPublic(
        id=event.id,
        at=event.at,
        key_name=event.key_name,
        action=event.action,
        gallery=event.gallery,
        target=event.target,
        status=event.status,
        outcome=event.outcome,
        client=event.client,
    )
