"""DICOM index: the content digest's algorithm; rows before this one hold SHA-256, later ones
BLAKE3 (dicom.checksum)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "dicom_instance",
        sa.Column("digest_alg", sa.String(length=16), nullable=False, server_default="sha256"),
    )


def downgrade() -> None:
    # a BLAKE3 digest would pass for a SHA-256 one: the older code would call every repeat
    # of such an instance a conflict, so the downgrade refuses while any is held
    bind = op.get_bind()
    held = bind.execute(
        sa.text("SELECT count(*) FROM dicom_instance WHERE digest_alg <> 'sha256'")
    ).scalar()
    if held:
        raise RuntimeError(
            f"{held} DICOM index rows hold BLAKE3 digests, which the code before revision "
            "0006 cannot read; recompute them as SHA-256 before downgrading"
        )
    with op.batch_alter_table("dicom_instance") as batch:
        batch.drop_column("digest_alg")
