"""webhooks: deliveries claimed under a lease, tenants' signing secrets encrypted at rest;
jobs' traceparent

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 06:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_secrets = sa.table('webhook_secrets', sa.column('tenant', sa.String), sa.column('secret', sa.String))


def _box():  # type: ignore[no-untyped-def]
    from app.config import Settings
    from app.store.secret_box import secret_box

    url = op.get_bind().engine.url.render_as_string(hide_password=False)
    return secret_box(Settings(), url, create=True)


def upgrade() -> None:
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('claimed_until', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True)
        )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('traceparent', sa.String(length=55), nullable=True))
    conn = op.get_bind()
    from app.store.secret_box import PREFIX

    plain = [r for r in conn.execute(sa.select(_secrets)).all() if not r.secret.startswith(PREFIX)]
    if plain:
        box = _box()
        for row in plain:
            conn.execute(
                _secrets.update()
                .where(_secrets.c.tenant == row.tenant)
                .values(secret=box.encrypt(row.secret))
            )


def downgrade() -> None:
    conn = op.get_bind()
    from app.store.secret_box import PREFIX

    stored = [r for r in conn.execute(sa.select(_secrets)).all() if r.secret.startswith(PREFIX)]
    if stored:
        box = _box()
        for row in stored:
            conn.execute(
                _secrets.update()
                .where(_secrets.c.tenant == row.tenant)
                .values(secret=box.decrypt(row.secret))
            )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('traceparent')
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_column('claimed_until')
