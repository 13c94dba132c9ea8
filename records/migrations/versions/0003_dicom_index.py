"""DICOM index and quarantine

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dicom_instance",
        sa.Column("sop_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class", sa.String(length=64), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("transfer_syntax", sa.String(length=64), nullable=False),
        sa.Column("patient_ref", sa.String(length=64), nullable=True),
        sa.Column("org_id", sa.String(length=64), nullable=True),
        sa.Column("calling_ae", sa.String(length=16), nullable=True),
        sa.Column("dicom_patient_id", sa.String(length=64), nullable=True),
        sa.Column("issuer", sa.String(length=64), nullable=True),
        sa.Column("patient_name", sa.String(length=255), nullable=True),
        sa.Column("name_key", sa.String(length=255), nullable=True),
        sa.Column("birth_date", sa.String(length=8), nullable=True),
        sa.Column("sex", sa.String(length=16), nullable=True),
        sa.Column("study_date", sa.String(length=8), nullable=True),
        sa.Column("study_time", sa.String(length=16), nullable=True),
        sa.Column("accession", sa.String(length=16), nullable=True),
        sa.Column("study_id", sa.String(length=16), nullable=True),
        sa.Column("study_description", sa.String(length=255), nullable=True),
        sa.Column("referring", sa.String(length=255), nullable=True),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.Column("series_description", sa.String(length=255), nullable=True),
        sa.Column("body_part", sa.String(length=64), nullable=True),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("frames", sa.Integer(), nullable=True),
        sa.Column("storage_key", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("header", sa.Text(), nullable=False),
        sa.Column("received", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sop_uid"),
    )
    op.create_index("ix_dicom_study", "dicom_instance", ["study_uid", "series_uid"])
    op.create_index("ix_dicom_series", "dicom_instance", ["series_uid"])
    op.create_index("ix_dicom_patient_ref", "dicom_instance", ["patient_ref"])
    op.create_index("ix_dicom_patient_id", "dicom_instance", ["dicom_patient_id"])
    op.create_index("ix_dicom_study_date", "dicom_instance", ["study_date"])
    op.create_table(
        "dicom_quarantine",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("received", sa.DateTime(timezone=True), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=True),
        sa.Column("peer", sa.String(length=255), nullable=True),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("sop_uid", sa.String(length=64), nullable=True),
        sa.Column("sop_class", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("storage_key", sa.String(length=255), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_dicom_quarantine_status", "dicom_quarantine", ["status", "received"])


def downgrade() -> None:
    op.drop_index("ix_dicom_quarantine_status", table_name="dicom_quarantine")
    op.drop_table("dicom_quarantine")
    for name in (
        "ix_dicom_study_date",
        "ix_dicom_patient_id",
        "ix_dicom_patient_ref",
        "ix_dicom_series",
        "ix_dicom_study",
    ):
        op.drop_index(name, table_name="dicom_instance")
    op.drop_table("dicom_instance")
