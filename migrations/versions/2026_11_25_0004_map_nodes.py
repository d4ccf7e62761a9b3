"""map nodes: sub-agents created at run time

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=8), server_default='agent', nullable=False))
        batch_op.add_column(sa.Column('parent_id', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True))
        batch_op.add_column(sa.Column('sub_index', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('item_json', sa.Text(), nullable=True))
        batch_op.alter_column('agent_id', existing_type=sqlmodel.sql.sqltypes.AutoString(length=64), type_=sqlmodel.sql.sqltypes.AutoString(length=100), existing_nullable=False)
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.alter_column('agent_id', existing_type=sqlmodel.sql.sqltypes.AutoString(length=64), type_=sqlmodel.sql.sqltypes.AutoString(length=100), existing_nullable=True)


def downgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.alter_column('agent_id', existing_type=sqlmodel.sql.sqltypes.AutoString(length=100), type_=sqlmodel.sql.sqltypes.AutoString(length=64), existing_nullable=True)
    with op.batch_alter_table('agents', schema=None) as batch_op:
        batch_op.alter_column('agent_id', existing_type=sqlmodel.sql.sqltypes.AutoString(length=100), type_=sqlmodel.sql.sqltypes.AutoString(length=64), existing_nullable=False)
        batch_op.drop_column('item_json')
        batch_op.drop_column('sub_index')
        batch_op.drop_column('parent_id')
        batch_op.drop_column('kind')
