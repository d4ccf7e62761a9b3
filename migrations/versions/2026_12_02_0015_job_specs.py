"""job_specs: the job's spec in a table of its own, out of the jobs row

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 20:30:00

SQLite keeps a large value in a chain of overflow pages inside the row: reading any column
stored after the spec walked the whole chain, about 15 ms for a 100,000-agent spec, on
every status read, tenant check and stream start of that job. Only a run, a retry and the
webhook lookup read the spec.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'job_specs',
        sa.Column('job_id', sa.String(length=26), nullable=False),
        sa.Column('spec_json', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_specs_job_id_jobs')),
        sa.PrimaryKeyConstraint('job_id', name=op.f('pk_job_specs')),
    )
    op.execute('INSERT INTO job_specs (job_id, spec_json) SELECT id, spec_json FROM jobs')
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.drop_column('spec_json')


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.add_column(sa.Column('spec_json', sa.Text(), nullable=False, server_default='{}'))
    op.execute(
        'UPDATE jobs SET spec_json = (SELECT s.spec_json FROM job_specs s WHERE s.job_id = jobs.id)'
        ' WHERE EXISTS (SELECT 1 FROM job_specs s WHERE s.job_id = jobs.id)'
    )
    op.drop_table('job_specs')
