"""agents' cached input tokens (priced at the cache-hit price) and reasoning tokens

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 23:55:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cached_tokens', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('reasoning_tokens', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.drop_column('reasoning_tokens')
        batch_op.drop_column('cached_tokens')
