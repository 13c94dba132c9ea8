"""The records boundary: every read and write of the resident record passes through here.

Each public method is one unit of work. It asks the access policy (``security.access``) what the
principal may do, applies the answer as SQL (``records.scope``), does the work with
``records.store`` and appends the audit record in the same transaction. A refusal rolls the work
back and is audited in a transaction of its own, then raised to the caller, whose adapter maps it
to its protocol (HTTP status + OperationOutcome for the FHIR API).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from sqlalchemy import Connection, Engine, and_, bindparam, func, or_, select
from sqlalchemy.exc import IntegrityError

from records import audit_log, db, fhirdates, fhirtypes, identity, ids, query, searchparams, store
from records.audit_log import Event
from records.errors import Conflict, FhirError, Forbidden, Invalid, NotFound, PreconditionFailed
from records.schema import audit_record, resource, search_reference, search_token
from records.scope import patient_set_clause, scope_clause
from records.store import Stored
from security.access import AccessPolicy, Action, Scope
from security.principal import Principal, Role

log = logging.getLogger(__name__)
T = TypeVar("T")
# Writes of a transaction whose access check waits until every entry is written.
Deferred = list[tuple[str, str, Scope]]
# A rule a write of one type must keep (who, the live body before or None, the body to be
# written or None to delete); it raises a FhirError to refuse, and may return the body to write
# instead (with the elements the server owns filled in: a Subscription's owner and status).
# Registered by the package that owns the rule (teleconsult: Task, Communication, Subscription).
Guard = Callable[[Principal, dict[str, Any] | None, dict[str, Any] | None], dict[str, Any] | None]
# Told of the versions written in a unit of work, inside its transaction, before it commits
# (a deletion is a version with ``deleted`` set): what it writes commits with them or not at all.
Observer = Callable[[Connection, Sequence[Stored]], None]


@dataclass
class SearchResult:
    request: query.SearchRequest
    matches: list[Stored] = field(default_factory=list)
    included: list[Stored] = field(default_factory=list)
    total: int = 0


@dataclass
class Match:
    patient: Stored
    score: float
    grade: str


class RecordService:
    def __init__(
        self,
        engine: Engine,
        policy: AccessPolicy | None = None,
        *,
        default_count: int = 20,
        max_count: int = 500,
    ) -> None:
        self.engine = engine
        self.policy = policy or AccessPolicy()
        self.default_count = default_count
        self.max_count = max_count
        self.guards: dict[str, Guard] = {}
        self.observers: list[Observer] = []

    def guard(self, rtype: str, rule: Guard) -> None:
        """Run ``rule`` on every create, update and delete of ``rtype``, whoever writes it."""
        self.guards[rtype] = rule

    def observe(self, observer: Observer) -> None:
        """Tell ``observer`` of every version written through this boundary (and the staged
        ingest path, which calls ``written``), in the writing transaction."""
        self.observers.append(observer)

    def written(self, conn: Connection, versions: Sequence[Stored]) -> None:
        """Versions were written in ``conn``'s unit of work: tell the observers."""
        if versions:
            for observer in self.observers:
                observer(conn, versions)

    # -- the unit of work ------------------------------------------------------------------

    def run(
        self,
        who: Principal,
        action: str,
        work: Callable[[Connection], tuple[T, list[Event]]],
        *,
        about: Iterable[str] = (),
    ) -> T:
        """Do ``work`` and append its audit events in one transaction; audit refusals too."""
        try:
            with self.engine.begin() as conn:
                result, events = work(conn)
                for event in events:
                    audit_log.append(conn, who, event)
            return result
        except FhirError as exc:
            self._audit_outcome(who, Event(action, tuple(about), (), "refused", exc.diagnostics))
            raise
        except IntegrityError:
            log.warning("integrity conflict during %s", action)
            conflict = Conflict(
                "the resource was changed by another request at the same time; retry"
            )
            self._audit_outcome(
                who, Event(action, tuple(about), (), "failed", conflict.diagnostics)
            )
            raise conflict from None

    def _audit_outcome(self, who: Principal, event: Event) -> None:
        with self.engine.begin() as conn:
            audit_log.append(conn, who, event)

    def audit(self, who: Principal, event: Event) -> None:
        """Record an event that is not a record operation (a login, a failed login)."""
        self._audit_outcome(who, event)

    # -- access helpers --------------------------------------------------------------------

    def scope(self, who: Principal, rtype: str, action: Action) -> Scope:
        decision = self.policy.decide(who, rtype, action)
        if not decision.allowed:
            raise Forbidden(decision.reason)
        return decision.scope

    @staticmethod
    def visible(conn: Connection, rtype: str, rid: str, scope: Scope) -> bool:
        if scope.unrestricted:
            return True
        row = conn.execute(
            select(resource.c.res_id).where(
                resource.c.res_type == rtype, resource.c.res_id == rid, scope_clause(scope, rtype)
            )
        ).first()
        return row is not None

    def _visible_current(self, conn: Connection, rtype: str, rid: str, scope: Scope) -> Stored:
        found = store.current(conn, rtype, rid)
        if found is None or not self.visible(conn, rtype, rid, scope):
            raise NotFound(f"{rtype}/{rid} is not known")
        return store.read(conn, rtype, rid)  # raises Gone for a deleted one

    # -- read --------------------------------------------------------------------------------

    def read(self, who: Principal, rtype: str, rid: str) -> Stored | dict[str, Any]:
        fhirtypes.check_type(rtype)
        if rtype == "AuditEvent":
            return self._read_audit_event(who, rid)
        ref = f"{rtype}/{rid}"

        def work(conn: Connection) -> tuple[Stored, list[Event]]:
            scope = self.scope(who, rtype, Action.READ)
            found = self._visible_current(conn, rtype, rid, scope)
            return found, [Event("read", (ref,), _patients(found))]

        return self.run(who, "read", work, about=[ref])

    def vread(self, who: Principal, rtype: str, rid: str, version: int) -> Stored:
        fhirtypes.check_type(rtype)
        ref = f"{rtype}/{rid}/_history/{version}"

        def work(conn: Connection) -> tuple[Stored, list[Event]]:
            scope = self.scope(who, rtype, Action.READ)
            head = store.current(conn, rtype, rid)
            if head is None or not self.visible(conn, rtype, rid, scope):
                raise NotFound(f"{rtype}/{rid} is not known")
            found = store.vread(conn, rtype, rid, version)
            return found, [Event("vread", (ref,), _patients(head))]

        return self.run(who, "vread", work, about=[ref])

    def history(
        self,
        who: Principal,
        rtype: str | None,
        rid: str | None,
        *,
        since: str | None = None,
        count: int | None = None,
        offset: int = 0,
    ) -> list[tuple[Stored, str]]:
        if rtype:
            fhirtypes.check_type(rtype)
        since_dt = query.as_datetime(since) if since else None
        if since and since_dt is None:
            raise Invalid(f"_since={since} is not a valid instant", expression=["_since"])
        limit = min(count or self.default_count, self.max_count)

        def work(conn: Connection) -> tuple[list[tuple[Stored, str]], list[Event]]:
            if rtype is None:  # system history: only those who see everything
                decision = self.policy.decide(who, "Patient", Action.READ)
                if not (decision.allowed and decision.scope.unrestricted):
                    raise Forbidden("system-wide history is for the gateway itself")
                entries = store.history(
                    conn, None, None, since=since_dt, limit=limit, offset=offset
                )
            else:
                scope = self.scope(who, rtype, Action.READ)
                if rid is not None:
                    head = store.current(conn, rtype, rid)
                    if head is None or not self.visible(conn, rtype, rid, scope):
                        raise NotFound(f"{rtype}/{rid} is not known")
                    entries = store.history(
                        conn, rtype, rid, since=since_dt, limit=limit, offset=offset
                    )
                else:
                    entries = [
                        entry
                        for entry in store.history(
                            conn, rtype, None, since=since_dt, limit=limit, offset=offset
                        )
                        if self.visible(conn, rtype, entry[0].res_id, scope)
                    ]
            return entries, [Event.touching("history", _touched(s for s, _ in entries))]

        return self.run(who, "history", work, about=[f"{rtype or ''}/{rid or ''}"])

    # -- write -------------------------------------------------------------------------------

    def create(
        self, who: Principal, rtype: str, body: Any, *, if_none_exist: str | None = None
    ) -> tuple[Stored, bool]:
        def work(conn: Connection) -> tuple[tuple[Stored, bool], list[Event]]:
            stored, created = self.create_in(conn, who, rtype, body, if_none_exist=if_none_exist)
            action = "create" if created else "read"
            return (stored, created), [
                Event(action, (f"{rtype}/{stored.res_id}",), _patients(stored))
            ]

        return self.run(who, "create", work, about=[rtype])

    def create_in(
        self,
        conn: Connection,
        who: Principal,
        rtype: str,
        body: Any,
        *,
        if_none_exist: str | None = None,
        rid: str | None = None,
        deferred: Deferred | None = None,
        models: bool = True,
    ) -> tuple[Stored, bool]:
        """Create ``body`` in the caller's transaction. ``models=False``: the R4 schema check
        only (``fhirtypes.validate``), for resources the gateway translated itself."""
        self._check_writable_type(rtype)
        scope = self.scope(who, rtype, Action.CREATE)
        body = self._prepare(who, rtype, body, models=models)
        if if_none_exist:
            existing = self._conditional_matches(conn, who, rtype, if_none_exist)
            if len(existing) > 1:
                raise PreconditionFailed(
                    f"If-None-Exist '{if_none_exist}' matches {len(existing)} resources"
                )
            if existing:
                return existing[0], False
        rid = rid or ids.new_id()
        body = self._guarded(who, rtype, None, body)
        self._check_prior_reach(conn, rtype, rid, body, scope)
        self._check_unique_resident_id(conn, rtype, rid, body)
        stored = store.write(conn, rtype, rid, body, "POST")
        self._check_reach(conn, rtype, rid, scope, deferred)
        self.written(conn, [stored])
        return stored, True

    def update(
        self, who: Principal, rtype: str, rid: str, body: Any, *, if_match: str | None = None
    ) -> tuple[Stored, bool]:
        def work(conn: Connection) -> tuple[tuple[Stored, bool], list[Event]]:
            stored, created = self.update_in(conn, who, rtype, rid, body, if_match=if_match)
            action = "create" if created else "update"
            return (stored, created), [Event(action, (f"{rtype}/{rid}",), _patients(stored))]

        return self.run(who, "update", work, about=[f"{rtype}/{rid}"])

    def update_in(
        self,
        conn: Connection,
        who: Principal,
        rtype: str,
        rid: str,
        body: Any,
        *,
        if_match: str | None = None,
        deferred: Deferred | None = None,
        models: bool = True,
    ) -> tuple[Stored, bool]:
        """Update in the caller's transaction; ``models`` as for ``create_in``."""
        self._check_writable_type(rtype)
        fhirtypes.check_id(rid)
        scope = self.scope(who, rtype, Action.UPDATE)
        if isinstance(body, dict) and body.get("id") not in (None, rid):
            raise Invalid(
                f"the resource id '{body.get('id')}' does not match the URL id '{rid}'",
                expression=[f"{rtype}.id"],
            )
        body = self._prepare(who, rtype, body, models=models)
        existing = store.current(conn, rtype, rid, lock=True)
        live = existing is not None and not existing.deleted
        if existing is not None and not self.visible(conn, rtype, rid, scope):
            raise NotFound(f"{rtype}/{rid} is not known")
        if if_match is not None:
            expected = if_match.strip().removeprefix("W/").strip('"')
            have = str(existing.version) if live and existing else None
            if expected != have:
                raise PreconditionFailed(
                    f"If-Match {if_match} but the current version is {have or 'none'}"
                )
        body = self._guarded(who, rtype, existing.json() if live and existing else None, body)
        self._check_prior_reach(conn, rtype, rid, body, scope)
        self._check_unique_resident_id(conn, rtype, rid, body)
        stored = store.write(conn, rtype, rid, body, "PUT")
        self._check_reach(conn, rtype, rid, scope, deferred)
        self.written(conn, [stored])
        return stored, not live

    def _check_reach(
        self, conn: Connection, rtype: str, rid: str, scope: Scope, deferred: Deferred | None
    ) -> None:
        """A write must leave the resource within the writer's reach. Inside a transaction the
        check waits for the end (``check_deferred``): entries may reference each other."""
        if deferred is not None:
            deferred.append((rtype, rid, scope))
        elif not self.visible(conn, rtype, rid, scope):
            raise Forbidden(
                f"this {rtype} would belong to a patient outside your organization's reach"
            )

    def _check_prior_reach(
        self, conn: Connection, rtype: str, rid: str, body: dict[str, Any], scope: Scope
    ) -> None:
        """A write must not bring a patient within reach: the patient whose compartment it
        joins must be visible before it is written (a ServiceRequest naming the writer as
        requester or performer would otherwise open any resident's record). A patient not yet
        written (created in the same transaction) is checked after, by ``_check_reach``."""
        if rtype == "Patient" or scope.patients is None:
            return
        patient, _ = store.compartment(conn, rtype, rid, body)
        if patient is None or store.current(conn, "Patient", patient) is None:
            return
        before = Scope(patients=scope.patients, include_unowned=False)
        if not self.visible(conn, "Patient", patient, before):
            raise Forbidden(f"this {rtype} would belong to a patient outside your reach")

    def check_deferred(self, conn: Connection, deferred: Deferred) -> None:
        for rtype, rid, scope in deferred:
            self._check_reach(conn, rtype, rid, scope, None)

    def delete(self, who: Principal, rtype: str, rid: str) -> Stored | None:
        def work(conn: Connection) -> tuple[Stored | None, list[Event]]:
            removed = self.delete_in(conn, who, rtype, rid)
            patients = _patients(removed) if removed else ()
            return removed, [Event("delete", (f"{rtype}/{rid}",), patients)]

        return self.run(who, "delete", work, about=[f"{rtype}/{rid}"])

    def delete_in(self, conn: Connection, who: Principal, rtype: str, rid: str) -> Stored | None:
        self._check_writable_type(rtype)
        scope = self.scope(who, rtype, Action.DELETE)
        existing = store.current(conn, rtype, rid)
        if existing is None or not self.visible(conn, rtype, rid, scope):
            raise NotFound(f"{rtype}/{rid} is not known")
        if not existing.deleted:
            self._check_guard(who, rtype, existing.json(), None)
        removed = store.remove(conn, rtype, rid)
        if removed is not None:
            self.written(conn, [removed])
        return removed

    def _check_guard(
        self, who: Principal, rtype: str, old: dict[str, Any] | None, new: dict[str, Any] | None
    ) -> None:
        rule = self.guards.get(rtype)
        if rule is not None:
            rule(who, old, new)

    def _guarded(
        self, who: Principal, rtype: str, old: dict[str, Any] | None, new: dict[str, Any]
    ) -> dict[str, Any]:
        """The body to write: ``new`` as its type's guard passed it, or completed by it."""
        rule = self.guards.get(rtype)
        completed = rule(who, old, new) if rule is not None else None
        return new if completed is None else completed

    def _check_writable_type(self, rtype: str) -> None:
        fhirtypes.check_type(rtype)
        if rtype in fhirtypes.READ_ONLY_TYPES:
            raise Forbidden(f"{rtype} is written by the gateway itself and cannot be changed")

    def _prepare(
        self, who: Principal, rtype: str, body: Any, *, models: bool = True
    ) -> dict[str, Any]:
        body = fhirtypes.validate(rtype, body, models=models)
        if rtype == "Patient":
            identity.validate_patient(body)
            if (
                who.role == Role.TOWNSHIP_DOCTOR
                and who.organization
                and "managingOrganization" not in body
            ):
                # A resident registered at a township clinic is managed by that clinic.
                body = {
                    **body,
                    "managingOrganization": {"reference": f"Organization/{who.organization}"},
                }
        return body

    def _check_unique_resident_id(
        self,
        conn: Connection,
        rtype: str,
        rid: str,
        body: dict[str, Any],
        *,
        lock: bool = True,
        holders: dict[tuple[str, str, str], set[str]] | None = None,
    ) -> None:
        """One live Patient per resident identity number. ``lock``: the caller writes in this
        transaction, so it first takes its turn on the number (PostgreSQL; a writer that reads
        a snapshot instead has its snapshot checked by ``records.staging``). ``holders``: who
        carries which identifier, read in the same snapshot (``find_by_identifiers``); a
        number looked up there needs no query of its own."""
        if rtype != "Patient":
            return
        number = identity.resident_id_of(body)
        if not number:
            return
        if lock:
            db.lock_keys(conn, [identity.lock_key(number)])
        known = holders.get(("Patient", identity.RESIDENT_ID_SYSTEM, number)) if holders else None
        if known is not None:
            taken = bool(known - {rid})
        else:
            taken = (
                conn.execute(_RESIDENT_ID_HOLDER, {"number": number, "rid": rid}).first()
                is not None
            )
        if taken:
            raise Conflict(
                "another Patient already carries this resident identity number; "
                "use conditional create (If-None-Exist) or Patient/$match to find it",
                expression=["Patient.identifier"],
            )

    def _conditional_matches(
        self, conn: Connection, who: Principal, rtype: str, criteria: str
    ) -> list[Stored]:
        items = parse_qsl(criteria.lstrip("?"), keep_blank_values=True)
        if not items:
            raise Invalid("If-None-Exist holds no search parameters")
        req = query.parse(rtype, items, default_count=3, max_count=3)
        req.count, req.offset = 3, 0
        return self._search_in(conn, who, req).matches

    # -- search ------------------------------------------------------------------------------

    def search(
        self, who: Principal, rtype: str, items: list[tuple[str, str]], *, lenient: bool = False
    ) -> SearchResult:
        fhirtypes.check_type(rtype)
        req = query.parse(
            rtype,
            items,
            default_count=self.default_count,
            max_count=self.max_count,
            lenient=lenient,
        )
        if rtype == "AuditEvent":
            return self._search_audit_events(who, req)

        def work(conn: Connection) -> tuple[SearchResult, list[Event]]:
            result = self._search_in(conn, who, req)
            touched = _touched(result.matches + result.included) or [(rtype, None)]
            return result, [Event.touching("search", touched)]

        return self.run(who, "search", work, about=[rtype])

    def search_in(
        self, conn: Connection, who: Principal, rtype: str, items: list[tuple[str, str]]
    ) -> SearchResult:
        """A search inside the caller's unit of work (which writes the audit record)."""
        fhirtypes.check_type(rtype)
        req = query.parse(rtype, items, default_count=self.max_count, max_count=self.max_count)
        return self._search_in(conn, who, req)

    def _search_in(
        self, conn: Connection, who: Principal, req: query.SearchRequest
    ) -> SearchResult:
        scope = self.scope(who, req.rtype, Action.SEARCH)
        where = [*query.filter_clauses(req), scope_clause(scope, req.rtype)]
        base = query.base_query(req.rtype).where(*where)
        total = conn.execute(select(func.count()).select_from(base.subquery())).scalar_one()
        result = SearchResult(req, total=total)
        if req.summary_count:
            return result
        page = base.order_by(*query.order_by(req)).limit(req.count).offset(req.offset)
        result.matches = [Stored(*row) for row in conn.execute(page)]
        result.included = self._includes(conn, who, req, result.matches)
        return result

    def _includes(
        self, conn: Connection, who: Principal, req: query.SearchRequest, matches: list[Stored]
    ) -> list[Stored]:
        if not matches or not (req.include or req.revinclude):
            return []
        seen = {(s.res_type, s.res_id) for s in matches}
        found: list[Stored] = []
        ids = [s.res_id for s in matches]
        ref = search_reference
        for spec in req.include:
            source_type, param, target_type = _include_spec(spec, req.rtype, "_include")
            cond = [ref.c.res_type == source_type, ref.c.res_id.in_(ids)]
            if param != "*":
                cond.append(ref.c.param == param)
            if target_type:
                cond.append(ref.c.target_type == target_type)
            targets = conn.execute(select(ref.c.target_type, ref.c.target_id).where(*cond)).all()
            for ttype, tid in targets:
                if ttype:
                    found.extend(self._visible_rows(conn, who, ttype, [tid], seen))
        for spec in req.revinclude:
            source_type, param, _ = _include_spec(spec, None, "_revinclude")
            cond = [
                ref.c.res_type == source_type,
                ref.c.target_type == req.rtype,
                ref.c.target_id.in_(ids),
            ]
            if param != "*":
                cond.append(ref.c.param == param)
            sources = [row[0] for row in conn.execute(select(ref.c.res_id).where(*cond).distinct())]
            found.extend(self._visible_rows(conn, who, source_type, sources, seen))
        return found

    def _visible_rows(
        self,
        conn: Connection,
        who: Principal,
        rtype: str,
        ids: list[str],
        seen: set[tuple[str, str]],
    ) -> list[Stored]:
        wanted = [i for i in ids if (rtype, i) not in seen]
        if not wanted or rtype not in fhirtypes.STORED_TYPES:
            return []
        decision = self.policy.decide(who, rtype, Action.READ)
        if not decision.allowed:
            return []
        rows = conn.execute(
            query.base_query(rtype).where(
                resource.c.res_id.in_(wanted), scope_clause(decision.scope, rtype)
            )
        )
        out = [Stored(*row) for row in rows]
        seen.update((s.res_type, s.res_id) for s in out)
        return out

    # -- Patient operations ------------------------------------------------------------------

    def everything(self, who: Principal, pid: str) -> list[Stored]:
        """Patient/$everything: the Patient and every resource of its compartment you may read."""

        def work(conn: Connection) -> tuple[list[Stored], list[Event]]:
            scope = self.scope(who, "Patient", Action.READ)
            patient = self._visible_current(conn, "Patient", pid, scope)
            out = [patient]
            rows = conn.execute(
                select(
                    resource.c.res_type,
                    resource.c.res_id,
                    resource.c.version,
                    resource.c.last_updated,
                    resource.c.deleted,
                    resource.c.content,
                    resource.c.patient_id,
                )
                .where(
                    resource.c.patient_id == pid,
                    resource.c.deleted.is_(False),
                    resource.c.res_type != "Patient",
                )
                .order_by(resource.c.res_type, resource.c.last_updated)
            )
            for row in rows:
                stored = Stored(*row)
                decision = self.policy.decide(who, stored.res_type, Action.READ)
                if decision.allowed and self.visible(
                    conn, stored.res_type, stored.res_id, decision.scope
                ):
                    out.append(stored)
            refs = tuple(f"{s.res_type}/{s.res_id}" for s in out)
            return out, [Event("everything", refs, (pid,))]

        return self.run(who, "everything", work, about=[f"Patient/{pid}"])

    def match(
        self, who: Principal, probe: Any, *, count: int = 10, only_certain: bool = False
    ) -> list[Match]:
        """Patient/$match: identifiers first (certain), then name/birth date/sex/phone score."""
        probe = fhirtypes.validate("Patient", probe)

        def work(conn: Connection) -> tuple[list[Match], list[Event]]:
            scope = self.scope(who, "Patient", Action.SEARCH)
            visible = scope_clause(scope, "Patient")
            idents = [
                (i.get("system"), i.get("value"))
                for i in probe.get("identifier") or []
                if isinstance(i, dict) and i.get("value")
            ]
            t = search_token
            matches: dict[str, Match] = {}
            for system, value in idents:
                cond = [t.c.res_type == "Patient", t.c.param == "identifier", t.c.code == value]
                if system:
                    cond.append(t.c.system == system)
                ids = [r[0] for r in conn.execute(select(t.c.res_id).where(*cond))]
                for row in conn.execute(
                    query.base_query("Patient").where(resource.c.res_id.in_(ids), visible)
                ):
                    stored = Stored(*row)
                    matches[stored.res_id] = Match(stored, 1.0, "certain")
            if not only_certain:
                for stored in self._match_candidates(conn, probe, visible):
                    if stored.res_id in matches:
                        continue
                    value = identity.score(stored.json(), probe)
                    grade = identity.grade(value, False)
                    if grade != "certainly-not":
                        matches[stored.res_id] = Match(stored, value, grade)
            ranked = sorted(matches.values(), key=lambda m: (-m.score, m.patient.res_id))[:count]
            touched = _touched(m.patient for m in ranked) or [("Patient", None)]
            return ranked, [Event.touching("match", touched)]

        return self.run(who, "match", work, about=["Patient"])

    def _match_candidates(
        self, conn: Connection, probe: dict[str, Any], visible: Any
    ) -> list[Stored]:
        items: list[tuple[str, str]] = []
        if probe.get("birthDate"):
            items.append(("birthdate", probe["birthDate"]))
        names = identity.full_names(probe)
        out: dict[str, Stored] = {}
        queries = []
        if items:
            queries.append(items)
        for name in names:
            queries.append([("name", name[:1])])  # same family name (first character)
        for phone in identity.phones(probe):
            queries.append([("phone", phone)])
        for items in queries:
            req = query.parse("Patient", items, default_count=200, max_count=200)
            rows = conn.execute(
                query.base_query("Patient").where(*query.filter_clauses(req), visible).limit(200)
            )
            for row in rows:
                out.setdefault(row.res_id, Stored(*row))
        return list(out.values())

    def merge(self, who: Principal, source_id: str, target_id: str) -> Stored:
        """Merge a duplicate Patient into the surviving one, keeping every version."""

        def work(conn: Connection) -> tuple[Stored, list[Event]]:
            result, moved = self.merge_in(conn, who, source_id, target_id)
            refs = (f"Patient/{source_id}", f"Patient/{target_id}", *moved)
            return result, [Event("merge", refs, (source_id, target_id))]

        return self.run(who, "merge", work, about=[f"Patient/{source_id}", f"Patient/{target_id}"])

    def merge_in(
        self, conn: Connection, who: Principal, source_id: str, target_id: str
    ) -> tuple[Stored, list[str]]:
        """The source is marked inactive and linked ``replaced-by`` the target; the target gets a
        ``replaces`` link; every resource in the source's compartment is re-pointed at the target
        as a new version, so history shows what it was before."""
        if source_id == target_id:
            raise Invalid("source and target of a merge must be different Patients")
        scope = self.scope(who, "Patient", Action.UPDATE)
        source = self._visible_current(conn, "Patient", source_id, scope)
        target = self._visible_current(conn, "Patient", target_id, scope)
        moved, versions = [], []
        rows = conn.execute(
            select(resource.c.res_type, resource.c.res_id).where(
                resource.c.patient_id == source_id,
                resource.c.deleted.is_(False),
                resource.c.res_type != "Patient",
            )
        ).all()
        for rtype, rid in rows:
            body = store.current(conn, rtype, rid).json()  # type: ignore[union-attr]
            versions.append(
                store.write(conn, rtype, rid, _repoint(body, source_id, target_id), "PUT")
            )
            moved.append(f"{rtype}/{rid}")
        src = source.json()
        src["active"] = False
        src["link"] = [
            *[x for x in src.get("link", []) if x.get("type") != "replaced-by"],
            {"other": {"reference": f"Patient/{target_id}"}, "type": "replaced-by"},
        ]
        versions.append(store.write(conn, "Patient", source_id, src, "PUT"))
        tgt = target.json()
        tgt["link"] = [
            *tgt.get("link", []),
            {"other": {"reference": f"Patient/{source_id}"}, "type": "replaces"},
        ]
        merged = store.write(conn, "Patient", target_id, tgt, "PUT")
        self.written(conn, [*versions, merged])
        return merged, moved

    def find_by_identifiers(
        self,
        conn: Connection,
        keys: list[tuple[str, str, str]],
        holders: dict[tuple[str, str, str], set[str]] | None = None,
    ) -> dict[tuple[str, str, str], Stored]:
        """Live resources by (type, identifier system, value), in one query (no access rules:
        for the gateway's own ingest); ``holders``: see ``store.by_identifiers``."""
        return store.by_identifiers(conn, keys, holders)

    def write_batch(
        self,
        conn: Connection,
        who: Principal,
        writes: list[tuple[str, str, dict[str, Any], bool]],
        *,
        models: bool = True,
    ) -> list[Stored]:
        """Write several resources, (type, id, body, new) each, with one statement per table.
        Same checks as create/update: validation, identity rules, access and reach.
        ``models=False``: the R4 schema check only (see ``fhirtypes.validate``)."""
        scopes = self._write_scopes(who, writes)
        written = store.write_many(conn, self._pending(conn, who, writes, models, lock=True))
        for stored in written:
            scope = scopes[stored.res_type]
            if not scope.unrestricted:
                self._check_reach(conn, stored.res_type, stored.res_id, scope, None)
        self.written(conn, written)
        return written

    def stage_batch(
        self,
        conn: Connection,
        who: Principal,
        writes: list[tuple[str, str, dict[str, Any], bool]],
        existing: dict[tuple[str, str], Stored],
        holders: dict[tuple[str, str, str], set[str]] | None = None,
    ) -> store.Rows | None:
        """The rows ``write_batch(models=False)`` would write, built from what ``conn`` (a
        reader) shows and what ``existing`` (the current versions of the updated ones) says,
        writing nothing: for a writer that checks that snapshot still holds at commit.
        ``holders``: who carries which identifier in the same snapshot, as
        ``find_by_identifiers`` gave it (a resident identity number found there is not looked
        up again). None when a write needs checks only a writing transaction can make
        (restricted reach)."""
        if not all(s.unrestricted for s in self._write_scopes(who, writes).values()):
            return None
        pending = self._pending(conn, who, writes, False, lock=False, holders=holders)
        if any(not p.new and (p.rtype, p.rid) not in existing for p in pending):
            return None
        return store.stage(conn, pending, dict(existing))

    def _write_scopes(
        self, who: Principal, writes: list[tuple[str, str, dict[str, Any], bool]]
    ) -> dict[str, Scope]:
        return {
            rtype: self.scope(who, rtype, Action.CREATE if new else Action.UPDATE)
            for rtype, _, _, new in writes
        }

    def _pending(
        self,
        conn: Connection,
        who: Principal,
        writes: list[tuple[str, str, dict[str, Any], bool]],
        models: bool,
        *,
        lock: bool,
        holders: dict[tuple[str, str, str], set[str]] | None = None,
    ) -> list[store.Pending]:
        pending = []
        for rtype, rid, body, new in writes:
            self._check_writable_type(rtype)
            prepared = self._prepare(who, rtype, body, models=models)
            if rtype in self.guards:
                before = None if new else store.current(conn, rtype, rid)
                old = before.json() if before and not before.deleted else None
                prepared = self._guarded(who, rtype, old, prepared)
            self._check_unique_resident_id(conn, rtype, rid, prepared, lock=lock, holders=holders)
            pending.append(store.Pending(rtype, rid, prepared, "POST" if new else "PUT", new))
        return pending

    def patient_by_identifiers(
        self, conn: Connection, who: Principal, body: dict[str, Any], *, models: bool = True
    ) -> tuple[Stored, bool]:
        """The live Patient carrying one of ``body``'s identifiers (the resident identity number
        first), else ``body`` created: (patient, created). Writers racing on the same person
        take turns on the identifiers (PostgreSQL), so they file under one Patient."""
        keys = patient_keys(body.get("identifier", []))
        db.lock_keys(conn, [f"patient:{k[1]}|{k[2]}" for k in keys])
        found = self.find_by_identifiers(conn, keys)
        for key in keys:
            if key in found:
                return found[key], False
        stored, _ = self.create_in(conn, who, "Patient", body, models=models)
        return stored, True

    def find_by_identifier(
        self, conn: Connection, rtype: str, system: str, value: str
    ) -> list[Stored]:
        """Live resources of a type carrying an identifier (no access rules: for system use)."""
        t = search_token
        ids = select(t.c.res_id).where(
            t.c.res_type == rtype,
            t.c.param == "identifier",
            t.c.system == system,
            t.c.code == value,
        )
        rows = conn.execute(query.base_query(rtype).where(resource.c.res_id.in_(ids)))
        return [Stored(*row) for row in rows]

    # -- AuditEvent (read-only view of the audit chain) --------------------------------------

    def _audit_scope_clause(self, who: Principal, action: Action):  # type: ignore[no-untyped-def]
        scope = self.scope(who, "AuditEvent", action)
        if scope.patients is None:
            return None
        return and_(
            audit_record.c.patient.is_not(None),
            patient_set_clause(scope.patients, audit_record.c.patient),
        )

    def _read_audit_event(self, who: Principal, rid: str) -> dict[str, Any]:
        def work(conn: Connection) -> tuple[dict[str, Any], list[Event]]:
            clause = self._audit_scope_clause(who, Action.READ)
            stmt = select(audit_record).where(audit_record.c.seq == _int_id(rid))
            if clause is not None:
                stmt = stmt.where(clause)
            row = conn.execute(stmt).first()
            if row is None:
                raise NotFound(f"AuditEvent/{rid} is not known")
            return audit_log.as_audit_event(row), [Event("read", (f"AuditEvent/{rid}",))]

        return self.run(who, "read", work, about=[f"AuditEvent/{rid}"])

    def _search_audit_events(self, who: Principal, req: query.SearchRequest) -> SearchResult:
        def work(conn: Connection) -> tuple[SearchResult, list[Event]]:
            clause = self._audit_scope_clause(who, Action.SEARCH)
            a = audit_record.c
            stmt = select(audit_record)
            if clause is not None:
                stmt = stmt.where(clause)
            for flt in req.filters:
                stmt = stmt.where(_audit_filter(flt))
            total = conn.execute(select(func.count()).select_from(stmt.subquery())).scalar_one()
            result = SearchResult(req, total=total)
            if not req.summary_count:
                rows = conn.execute(stmt.order_by(a.seq.desc()).limit(req.count).offset(req.offset))
                events = [audit_log.as_audit_event(row) for row in rows]
                result.matches = [_view(e) for e in events]
            return result, [Event("search", ("AuditEvent",))]

        return self.run(who, "search", work, about=["AuditEvent"])


# -- helpers -------------------------------------------------------------------------------------


_RESIDENT_ID_HOLDER = select(search_token.c.res_id).where(
    search_token.c.res_type == "Patient",
    search_token.c.param == "identifier",
    search_token.c.system == identity.RESIDENT_ID_SYSTEM,
    search_token.c.code == bindparam("number"),
    search_token.c.res_id != bindparam("rid"),
)


def _touched(stored: Iterable[Stored]) -> list[tuple[str, str | None]]:
    return [(f"{s.res_type}/{s.res_id}", s.patient_id) for s in stored]


def _patients(stored: Stored | None) -> tuple[str, ...]:
    return (stored.patient_id,) if stored and stored.patient_id else ()


def _include_spec(spec: str, default_source: str | None, name: str) -> tuple[str, str, str | None]:
    parts = spec.split(":")
    if spec == "*" and default_source:
        return default_source, "*", None
    if len(parts) < 2:
        raise Invalid(f"{name}={spec}: expected SourceType:param[:TargetType]", expression=[name])
    source, param = parts[0], parts[1]
    if source not in searchparams.PARAMS:
        raise Invalid(f"{name}={spec}: unknown resource type {source}", expression=[name])
    if param != "*":
        known = searchparams.PARAMS[source].get(param)
        if known is None or known.kind != "reference":
            raise Invalid(
                f"{name}={spec}: {source} has no reference parameter '{param}'", expression=[name]
            )
    return source, param, parts[2] if len(parts) > 2 else None


def _repoint(node: Any, source_id: str, target_id: str) -> Any:
    if isinstance(node, dict):
        out = {k: _repoint(v, source_id, target_id) for k, v in node.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and searchparams.parse_reference(ref) == ("Patient", source_id):
            out["reference"] = f"Patient/{target_id}"
        return out
    if isinstance(node, list):
        return [_repoint(v, source_id, target_id) for v in node]
    return node


def _int_id(rid: str) -> int:
    try:
        return int(rid)
    except ValueError:
        raise NotFound(f"AuditEvent/{rid} is not known") from None


def _view(event: dict[str, Any]) -> Stored:
    """Wrap a generated AuditEvent so search bundles treat it like a stored resource."""
    recorded = fhirdates.parse_range(event["recorded"])
    assert recorded is not None
    return Stored("AuditEvent", event["id"], 1, recorded[0], False, store.dumps(event))


def _audit_filter(flt: query.Filter):  # type: ignore[no-untyped-def]
    a = audit_record.c
    if flt.name == "_id":
        return a.seq.in_([_int_id(v) for v in flt.values])
    if flt.name == "patient":
        return a.patient.in_([v.removeprefix("Patient/") for v in flt.values])
    if flt.name == "agent":
        return a.actor.in_(flt.values)
    if flt.name == "action":
        return a.action.in_(flt.values)
    if flt.name == "outcome":
        codes = {"0": "success", "4": "refused", "8": "failed"}
        return a.outcome.in_([codes.get(v, v) for v in flt.values])
    if flt.name in ("date", "_lastUpdated"):
        return or_(
            *[query._date_condition(a.recorded, a.recorded, v, flt.name) for v in flt.values]
        )
    raise Invalid(f"AuditEvent cannot be searched by {flt.name}")


def patient_keys(identifiers: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The identifier keys a Patient is found by (``patient_by_identifiers``), the strongest
    (the resident identity number) first."""
    keys = [
        ("Patient", i["system"], i["value"])
        for i in identifiers
        if i.get("system") and i.get("value")
    ]
    keys.sort(key=lambda k: k[1] != identity.RESIDENT_ID_SYSTEM)
    return keys
