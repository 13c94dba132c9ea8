"""Everything the process wires once at start-up, held on ``app.state.ctx``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Engine

from adapters.hl7v2.ingest import Hl7Ingest
from adapters.hl7v2.ingest import Settings as IngestSettings
from adapters.hl7v2.workers import StagingPool
from dicom.ingest import IN_MEMORY, DicomIngest
from dicom.readers import Readers
from dicom.storage import FileStore
from gateway.settings import Settings
from records import db
from records.committer import GroupCommitter
from records.outbox import Backoff
from records.service import RecordService
from security import signing
from security.access import AccessPolicy
from security.tls import certificate_expiry, certificate_file_common_name, client_context
from security.tokens import TokenIssuer, load_or_create_signing_key
from teleconsult import lifecycle, notify
from teleconsult.delivery import Courier, Credentials, DeliverySettings
from teleconsult.inbox import Inbox
from teleconsult.routing import RoutingRules
from teleconsult.service import Teleconsult
from teleconsult.subscription import Subscriptions


@dataclass
class Context:
    settings: Settings
    engine: Engine
    records: RecordService
    tokens: TokenIssuer
    hl7: Hl7Ingest
    dicom: DicomIngest
    teleconsult: Teleconsult
    inbox: Inbox
    courier: Courier
    # blocking work of the listeners (parsing, mapping, database) runs on these threads
    executor: ThreadPoolExecutor = field(repr=False, default_factory=ThreadPoolExecutor)
    # the FHIR Subscriptions this records boundary matches writes against
    subscriptions: Subscriptions | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        migrate: bool = True,
        serving: bool = False,
        reading: bool | None = None,
    ) -> Context:
        """``serving``: the gateway itself (``yilian serve``), which starts the HL7 worker
        processes; a CLI command works in its own process only. ``reading``: with DICOM
        reader processes (``dicom_readers``; default: when serving)."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = db.make_engine(
            settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous
        )
        if migrate:
            db.upgrade(engine)
        records = RecordService(
            engine,
            AccessPolicy(),
            default_count=settings.page_size_default,
            max_count=settings.page_size_max,
        )
        records.guard("Task", lifecycle.check)
        records.guard("Communication", notify.check)  # the recipient only marks it read
        subscriptions = Subscriptions(records)
        records.guard("Subscription", subscriptions.check)
        records.observe(subscriptions.written)  # rest-hook matches, in the writer's transaction
        key = load_or_create_signing_key(settings.keys_dir)
        tokens = TokenIssuer(key, settings.token_issuer, settings.token_ttl_seconds)
        # the one writer of ingested data (HL7 and DICOM) of each process: one transaction, one
        # fsync, many units; with DICOM processes beside the gateway's, one of several
        shared = settings.dicom_enabled and settings.resolved_dicom_processes > 1
        committer = GroupCommitter(
            engine, name="ingest-writer", observe=records.written, shared=shared
        )
        hl7 = Hl7Ingest(
            records,
            IngestSettings(
                max_bytes=settings.hl7_max_bytes,
                default_tz=settings.hl7_default_tz,
                sender_charsets=settings.hl7_sender_charsets,
            ),
            committer,
        )
        dicom = DicomIngest(
            records,
            FileStore(settings.data_dir / "dicom"),
            committer,
            default_tz=settings.hl7_default_tz,
            shared=shared,
        )
        if (serving if reading is None else reading) and settings.resolved_dicom_readers:
            dicom.readers = Readers(settings.resolved_dicom_readers, IN_MEMORY)
        workers = settings.resolved_hl7_workers if serving else 0
        if workers:
            hl7.stager = StagingPool(
                workers,
                settings.resolved_database_url,
                hl7.settings,
                sqlite_synchronous=settings.sqlite_synchronous,
            )
        executor = ThreadPoolExecutor(settings.ingest_threads, thread_name_prefix="ingest")
        rules = (
            RoutingRules.load(settings.routing_rules)
            if settings.routing_rules
            else RoutingRules.default()
        )
        report_key = signing.load_or_create_signing_key(settings.keys_dir / "report-signing.pem")
        teleconsult = Teleconsult(records, rules, report_key)
        courier = Courier(records, teleconsult, dicom.store, delivery_settings(settings))
        return cls(
            settings,
            engine,
            records,
            tokens,
            hl7,
            dicom,
            teleconsult,
            Inbox(records, teleconsult, served_members(settings)),
            courier,
            executor,
            subscriptions,
        )

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        if isinstance(self.hl7.stager, StagingPool):
            self.hl7.stager.close()
        self.hl7.close()
        self.dicom.close()
        self.engine.dispose()


def served_members(settings: Settings) -> frozenset[str]:
    """The members this gateway receives messages for: the one its consortium client
    certificate names (none without one: it then takes no messages)."""
    if not settings.consortium_tls_cert:
        return frozenset()
    name = certificate_file_common_name(settings.consortium_tls_cert)
    return frozenset({name} if name else ())


def delivery_settings(settings: Settings) -> DeliverySettings:
    tls, expires = None, None
    if settings.consortium_tls_cert and settings.consortium_tls_key and settings.consortium_tls_ca:
        tls = client_context(
            settings.consortium_tls_cert, settings.consortium_tls_key, settings.consortium_tls_ca
        )
        expires = certificate_expiry(settings.consortium_tls_cert)
    return DeliverySettings(
        tls=tls,
        certificate_expires=expires,
        calling_ae=settings.dicom_ae,
        credentials={
            member: Credentials(pair["client_id"], pair["client_secret"])
            for member, pair in settings.peer_credentials.items()
        },
        lease=timedelta(seconds=settings.outbox_lease_seconds),
        backoff=Backoff(
            settings.outbox_retry_base, settings.outbox_retry_cap, settings.outbox_max_attempts
        ),
        poll=settings.outbox_poll_seconds,
        hold=timedelta(seconds=settings.outbox_hold_seconds),
    )
