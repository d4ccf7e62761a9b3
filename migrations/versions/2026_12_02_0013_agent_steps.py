"""agent_steps: the stored transcript of each tool-using agent's loop

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 06:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'agent_steps',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('job_id', sa.String(length=26), nullable=False),
        sa.Column('agent_id', sa.String(length=100), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('step', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('call_id', sa.String(length=300), nullable=True),
        sa.Column('tool', sa.String(length=200), nullable=True),
        sa.Column('data_json', sa.Text(), nullable=False),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_agent_steps')),
        sa.UniqueConstraint(
            'job_id', 'agent_id', 'seq', name='uq_agent_steps_job_id_agent_id_seq'
        ),
    )


def downgrade() -> None:
    op.drop_table('agent_steps')
