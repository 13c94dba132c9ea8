"""The database schema of the resident record. Alembic migrations in ``migrations/`` create it.

Tables:
- ``resource``: the current version of every FHIR resource, with the patient whose compartment
  it belongs to (``patient_id``) and, for a Patient, the managing organization (``org_id``);
  both drive the access rules.
- ``resource_version``: every version ever written (history, vread); never updated.
- ``search_*``: the search index, rebuilt for a resource whenever it is written.
- ``audit_record`` / ``audit_head``: the append-only, hash-chained audit log.
- ``app_user``: people and system clients who may get a token.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

TYPE = 64  # FHIR resource type names are short
ID = 64  # FHIR ids are at most 64 characters

resource = Table(
    "resource",
    metadata,
    Column("res_type", String(TYPE), primary_key=True),
    Column("res_id", String(ID), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("patient_id", String(ID), nullable=True),
    Column("org_id", String(ID), nullable=True),
    Column("content", Text, nullable=True),
)
Index("ix_resource_patient", resource.c.patient_id)
Index("ix_resource_type_updated", resource.c.res_type, resource.c.last_updated)
Index("ix_resource_org", resource.c.res_type, resource.c.org_id)

resource_version = Table(
    "resource_version",
    metadata,
    Column("res_type", String(TYPE), primary_key=True),
    Column("res_id", String(ID), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("method", String(8), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content", Text, nullable=True),
)
Index("ix_resource_version_updated", resource_version.c.last_updated)

search_token = Table(
    "search_token",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("res_type", String(TYPE), nullable=False),
    Column("res_id", String(ID), nullable=False),
    Column("param", String(64), nullable=False),
    Column("system", String(255), nullable=True),
    Column("code", String(255), nullable=True),
)
Index("ix_search_token_lookup", search_token.c.res_type, search_token.c.param, search_token.c.code)
Index("ix_search_token_owner", search_token.c.res_type, search_token.c.res_id)

search_string = Table(
    "search_string",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("res_type", String(TYPE), nullable=False),
    Column("res_id", String(ID), nullable=False),
    Column("param", String(64), nullable=False),
    Column("value", String(255), nullable=False),  # normalised (case-folded) for matching
    Column("raw", String(255), nullable=False),  # as written, for :exact
)
Index(
    "ix_search_string_lookup",
    search_string.c.res_type,
    search_string.c.param,
    search_string.c.value,
)
Index("ix_search_string_owner", search_string.c.res_type, search_string.c.res_id)

search_date = Table(
    "search_date",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("res_type", String(TYPE), nullable=False),
    Column("res_id", String(ID), nullable=False),
    Column("param", String(64), nullable=False),
    Column("low", DateTime(timezone=True), nullable=False),
    Column("high", DateTime(timezone=True), nullable=False),
)
Index("ix_search_date_lookup", search_date.c.res_type, search_date.c.param, search_date.c.low)
Index("ix_search_date_owner", search_date.c.res_type, search_date.c.res_id)

search_reference = Table(
    "search_reference",
    metadata,
    Column("pk", Integer, primary_key=True, autoincrement=True),
    Column("res_type", String(TYPE), nullable=False),
    Column("res_id", String(ID), nullable=False),
    Column("param", String(64), nullable=False),
    Column("target_type", String(TYPE), nullable=True),
    Column("target_id", String(255), nullable=False),
)
Index(
    "ix_search_reference_target",
    search_reference.c.target_id,
    search_reference.c.target_type,
    search_reference.c.param,
)
Index("ix_search_reference_owner", search_reference.c.res_type, search_reference.c.res_id)

audit_record = Table(
    "audit_record",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("recorded", DateTime(timezone=True), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("role", String(32), nullable=False),
    Column("organization", String(ID), nullable=True),
    Column("action", String(32), nullable=False),
    Column("resources", Text, nullable=False),  # JSON list of "Type/id"
    Column("patient", String(ID), nullable=True),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text, nullable=True),  # reason for a failure; never patient data
    Column("source", String(128), nullable=True),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)
Index("ix_audit_patient", audit_record.c.patient)
Index("ix_audit_recorded", audit_record.c.recorded)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)

app_user = Table(
    "app_user",
    metadata,
    Column("username", String(128), primary_key=True),
    Column("kind", String(16), nullable=False, default="person"),  # person | client
    Column("role", String(32), nullable=False),
    Column("organization", String(ID), nullable=False),
    Column("patient_id", String(ID), nullable=True),
    Column("practitioner_id", String(ID), nullable=True),
    Column("display", String(255), nullable=True),
    Column("password_hash", String(255), nullable=False),
    Column("active", Boolean, nullable=False, default=True),
    Column("created", DateTime(timezone=True), nullable=False),
)

# Every inbound message or object (HL7 v2 now, DICOM later) with its outcome: nothing is
# silently dropped (DESIGN.md rule 3). The raw bytes are kept for the operator to read and
# reprocess. (sender, control_id) finds a repeated HL7 message.
inbound_message = Table(
    "inbound_message",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("protocol", String(16), nullable=False),  # hl7v2 | dicom
    Column("origin", String(16), nullable=False),  # mllp | http | dicom | stow
    Column("received", DateTime(timezone=True), nullable=False),
    Column("sender", String(255), nullable=True),  # "APP|FACILITY" for HL7
    Column("organization", String(ID), nullable=True),  # the registered sending Organization
    Column("control_id", String(199), nullable=True),
    Column("content_hash", String(64), nullable=False),
    Column("message_type", String(32), nullable=True),  # ORU^R01
    Column("version", String(16), nullable=True),
    Column("charset", String(32), nullable=True),
    Column("raw", LargeBinary, nullable=False),
    # accepted | accepted-with-warnings | rejected | failed
    Column("outcome", String(32), nullable=False),
    Column("ack_code", String(2), nullable=True),  # AA AE AR CA CE CR
    Column("ack", LargeBinary, nullable=True),
    Column("warnings", Text, nullable=False, default="[]"),  # JSON list of strings
    Column("error", Text, nullable=True),
    Column("resources", Text, nullable=False, default="[]"),  # JSON list of "Type/id"
    Column("patient_id", String(ID), nullable=True),
    Column("attempts", Integer, nullable=False, default=1),
    Column("updated", DateTime(timezone=True), nullable=False),
)
Index(
    "ux_inbound_control",
    inbound_message.c.protocol,
    inbound_message.c.sender,
    inbound_message.c.control_id,
    inbound_message.c.content_hash,
    unique=True,
)
Index("ix_inbound_received", inbound_message.c.received)
Index("ix_inbound_outcome", inbound_message.c.outcome, inbound_message.c.received)

# The DICOM index: one row per stored instance, with the patient/study/series attributes the
# query services match on (C-FIND, QIDO-RS) copied out of the header. The object itself lives in
# the object store (``dicom.storage``) under ``storage_key``, exactly as it was received.
# Text columns hold the values decoded (Chinese names as Unicode); ``name_key`` is the patient's
# name folded for matching (case, spaces, ``^`` and ``=`` groups). ``header`` is the DICOM JSON
# of the header without bulk data (WADO-RS metadata, QIDO includefield).
dicom_instance = Table(
    "dicom_instance",
    metadata,
    Column("sop_uid", String(ID), primary_key=True),
    Column("sop_class", String(ID), nullable=False),
    Column("study_uid", String(ID), nullable=False),
    Column("series_uid", String(ID), nullable=False),
    Column("transfer_syntax", String(ID), nullable=False),
    Column("patient_ref", String(ID), nullable=True),  # FHIR Patient id
    Column("org_id", String(ID), nullable=True),  # the sending Organization
    Column("calling_ae", String(16), nullable=True),
    Column("dicom_patient_id", String(ID), nullable=True),
    Column("issuer", String(ID), nullable=True),
    Column("patient_name", String(255), nullable=True),
    Column("name_key", String(255), nullable=True),
    Column("birth_date", String(8), nullable=True),
    Column("sex", String(16), nullable=True),
    Column("study_date", String(8), nullable=True),
    Column("study_time", String(16), nullable=True),
    Column("accession", String(16), nullable=True),
    Column("study_id", String(16), nullable=True),
    Column("study_description", String(255), nullable=True),
    Column("referring", String(255), nullable=True),
    Column("modality", String(16), nullable=True),
    Column("series_number", Integer, nullable=True),
    Column("series_description", String(255), nullable=True),
    Column("body_part", String(64), nullable=True),
    Column("instance_number", Integer, nullable=True),
    Column("frames", Integer, nullable=True),
    Column("storage_key", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("digest", String(64), nullable=False),  # of the stored bytes, hex (dicom.checksum)
    Column("digest_alg", String(16), nullable=False, server_default="sha256"),  # blake3 since 0006
    # the header as DICOM JSON without bulk data, made when first asked for (dicom.index.Headers)
    Column("header", Text, nullable=True),
    Column("received", DateTime(timezone=True), nullable=False),
)
Index("ix_dicom_study", dicom_instance.c.study_uid, dicom_instance.c.series_uid)
Index("ix_dicom_series", dicom_instance.c.series_uid)
Index("ix_dicom_patient_ref", dicom_instance.c.patient_ref)
Index("ix_dicom_patient_id", dicom_instance.c.dicom_patient_id)
Index("ix_dicom_study_date", dicom_instance.c.study_date)

# Objects the gateway could not file, kept with the reason for the operator
# (``yilian dicom quarantine list|show|retry``).
dicom_quarantine = Table(
    "dicom_quarantine",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("received", DateTime(timezone=True), nullable=False),
    Column("calling_ae", String(16), nullable=True),
    Column("peer", String(255), nullable=True),
    Column("origin", String(16), nullable=False),  # dicom | stow
    Column("sop_uid", String(ID), nullable=True),
    Column("sop_class", String(ID), nullable=True),
    Column("reason", Text, nullable=False),
    Column("status", String(16), nullable=False),  # quarantined | released
    Column("storage_key", String(255), nullable=True),
    Column("size", BigInteger, nullable=False, default=0),
    Column("attempts", Integer, nullable=False, default=1),
    Column("updated", DateTime(timezone=True), nullable=False),
)
Index("ix_dicom_quarantine_status", dicom_quarantine.c.status, dicom_quarantine.c.received)

# The outbox (DESIGN.md rule 2): what must reach another consortium member, written in the same
# transaction as the change that calls for it and delivered afterwards by the workers
# (``records.outbox``). ``destination`` is the Endpoint it goes to; its rows go out in ``seq``
# order. A claimed row carries a lease (``lease_until``, ``leased_by``); a worker that dies
# leaves it to expire and the row is claimed again.
outbox = Table(
    "outbox",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("id", String(ID), nullable=False, unique=True),  # the idempotency key sent along
    Column("destination", String(ID), nullable=False),  # Endpoint id
    Column("channel", String(16), nullable=False),  # fhir | dicom
    Column("topic", String(32), nullable=False),  # request | status | report | cancel | images
    Column("subject", String(ID), nullable=True),  # the Task it belongs to
    Column("payload", Text, nullable=False),  # JSON
    Column("status", String(16), nullable=False),  # pending | delivered | dead | cancelled
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt", DateTime(timezone=True), nullable=False),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("leased_by", String(64), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("updated", DateTime(timezone=True), nullable=False),
    Column("delivered", DateTime(timezone=True), nullable=True),
)
Index("ix_outbox_head", outbox.c.status, outbox.c.destination, outbox.c.seq)
Index("ix_outbox_subject", outbox.c.subject)
