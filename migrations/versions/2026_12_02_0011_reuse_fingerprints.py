"""agents' request fingerprints (reuse across jobs) and where a reused output came from

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 06:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fingerprint', sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column('reused_from_job_id', sa.String(length=26), nullable=True)
        )
        batch_op.add_column(
            sa.Column('reused_from_agent_id', sa.String(length=100), nullable=True)
        )
        batch_op.add_column(sa.Column('reuse_saved_usd', sa.Float(), nullable=True))
        batch_op.create_index('ix_agents_fingerprint', ['fingerprint'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.drop_index('ix_agents_fingerprint')
        batch_op.drop_column('reuse_saved_usd')
        batch_op.drop_column('reused_from_agent_id')
        batch_op.drop_column('reused_from_job_id')
        batch_op.drop_column('fingerprint')
