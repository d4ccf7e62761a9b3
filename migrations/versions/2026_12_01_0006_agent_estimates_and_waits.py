"""agent usage estimates and attempt counts: estimated usage of attempts whose answer never
arrived, the estimate of the attempt in flight, failed attempts, time told to wait, attempts
that never reached the upstream

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('estimated_tokens', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('estimated_cost_usd', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('in_flight_json', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('failed_attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('waited_s', sa.Float(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('unsent', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.drop_column('unsent')
        batch_op.drop_column('waited_s')
        batch_op.drop_column('failed_attempts')
        batch_op.drop_column('in_flight_json')
        batch_op.drop_column('estimated_cost_usd')
        batch_op.drop_column('estimated_tokens')
