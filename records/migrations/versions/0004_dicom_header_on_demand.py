"""DICOM index: the header JSON is made on first read, not at ingest (nullable)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dicom_instance") as batch:
        batch.alter_column("header", existing_type=sa.Text(), nullable=True)


def downgrade() -> None:
    op.execute("UPDATE dicom_instance SET header = '{}' WHERE header IS NULL")
    with op.batch_alter_table("dicom_instance") as batch:
        batch.alter_column("header", existing_type=sa.Text(), nullable=False)
