"""job_totals: each job's agents counted by status and their usage summed, kept by triggers

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 19:30:00

A trigger on `agents` keeps one `job_totals` row per job up to date at every update of an
agent row, whatever statement made it (one agent's transition, a cancel that skips
thousands). SQLite runs a row trigger, only when a counted column is in the statement's SET
list and changed; PostgreSQL a statement trigger over the statement's transition tables, so
a statement that changes 1,000 rows rewrites the job's row once, not 1,000 times in one
transaction. Inserted agents are added by the code that inserts them
(`app/store/totals.py`, `insert_agents`): a row trigger costs SQLite about 15 µs a row,
most of a 100,000-agent submit.

A later migration that rebuilds `agents` on SQLite (batch mode copies the table) drops its
triggers: it must create them again (`_create_sqlite_triggers`).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = ('pending', 'running', 'completed', 'failed', 'skipped', 'cancelled')
# total column <- the agents column summed (None: a count of agents per status)
SUMS = {
    'prompt_tokens': 'prompt_tokens',
    'completion_tokens': 'completion_tokens',
    'total_tokens': 'total_tokens',
    'cost_usd': 'cost_usd',
    'estimated_tokens': 'estimated_tokens',
    'estimated_cost_usd': 'estimated_cost_usd',
    'cached_tokens': 'cached_tokens',
    'reasoning_tokens': 'reasoning_tokens',
    'reuse_saved_usd': 'reuse_saved_usd',
}
# total column <- the agents column whose non-null values it counts
COUNTS = {
    'with_usage': 'total_tokens',
    'priced': 'cost_usd',
    'estimated_tokens_n': 'estimated_tokens',
    'estimated_cost_n': 'estimated_cost_usd',
    'cached_tokens_n': 'cached_tokens',
    'reasoning_tokens_n': 'reasoning_tokens',
    'reused': 'reused_from_job_id',
    'reuse_saved_n': 'reuse_saved_usd',
}
FLOATS = ('cost_usd', 'estimated_cost_usd', 'reuse_saved_usd')
WATCHED = sorted({'status', *SUMS.values(), *COUNTS.values()})


def _terms(row: str, *, pg: bool) -> dict[str, str]:
    """Each total's contribution of one agent row (`NEW`/`OLD`, or a transition table's
    alias), as SQL."""
    cast = '::int' if pg else ''
    out = {s: f"({row}.status = '{s}'){cast}" for s in STATUSES}
    out |= {t: f'coalesce({row}.{c}, 0)' for t, c in SUMS.items()}
    out |= {t: f'({row}.{c} IS NOT NULL){cast}' for t, c in COUNTS.items()}
    return out


def _create_sqlite_triggers() -> None:
    new, old = _terms('NEW', pg=False), _terms('OLD', pg=False)
    changed = ', '.join(f'{t} = {t} + ({new[t]} - {old[t]})' for t in new)
    differs = ' OR '.join(f'NEW.{c} IS NOT OLD.{c}' for c in WATCHED)
    op.execute(
        f'CREATE TRIGGER agents_totals_update AFTER UPDATE OF {", ".join(WATCHED)} ON agents '
        f'WHEN {differs} BEGIN '
        f'UPDATE job_totals SET {changed} WHERE job_id = NEW.job_id; END'
    )


def _create_postgres_triggers() -> None:
    new, old = _terms('n', pg=True), _terms('o', pg=True)
    assign = ', '.join(f'{t} = t.{t} + d.{t}' for t in new)
    changed = ', '.join(f'sum({new[t]} - {old[t]}) AS {t}' for t in new)
    differs = ' OR '.join(f'n.{c} IS DISTINCT FROM o.{c}' for c in WATCHED)
    op.execute(
        'CREATE FUNCTION agents_totals_update() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN '
        f'UPDATE job_totals t SET {assign} FROM (SELECT n.job_id, {changed} '
        'FROM new_rows n JOIN old_rows o ON o.job_id = n.job_id AND o.agent_id = n.agent_id '
        f'WHERE {differs} GROUP BY n.job_id) d WHERE t.job_id = d.job_id; '
        'RETURN NULL; END $$'
    )
    op.execute(
        'CREATE TRIGGER agents_totals_update AFTER UPDATE ON agents '
        'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT '
        'EXECUTE FUNCTION agents_totals_update()'
    )


def upgrade() -> None:
    columns = [sa.Column('job_id', sa.String(length=26), nullable=False)]
    for name in (*STATUSES, *SUMS, *COUNTS):
        kind = sa.Float() if name in FLOATS else sa.Integer()
        columns.append(sa.Column(name, kind, nullable=False, server_default='0'))
    op.create_table(
        'job_totals',
        *columns,
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_totals_job_id_jobs')),
        sa.PrimaryKeyConstraint('job_id', name=op.f('pk_job_totals')),
    )
    # The jobs already stored, from their agents (any job without agents gets zeros).
    a = _terms('a', pg=op.get_bind().dialect.name == 'postgresql')
    names = list(a)
    sums = ', '.join(f'coalesce(sum({a[t]}), 0)' for t in names)
    op.execute(
        f'INSERT INTO job_totals (job_id, {", ".join(names)}) '
        f'SELECT j.id, {sums} FROM jobs j LEFT JOIN agents a ON a.job_id = j.id GROUP BY j.id'
    )
    if op.get_bind().dialect.name == 'postgresql':
        _create_postgres_triggers()
    else:
        _create_sqlite_triggers()


def downgrade() -> None:
    op.execute('DROP TRIGGER IF EXISTS agents_totals_update' + _on_agents())
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('DROP FUNCTION IF EXISTS agents_totals_update()')
    op.drop_table('job_totals')


def _on_agents() -> str:
    return ' ON agents' if op.get_bind().dialect.name == 'postgresql' else ''
