"""Audit heads: the signed head of each rollout's chain after each batch, beside the rows.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

PG_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_heads_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_heads is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "audit_heads",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("rollout_id", sa.String(255), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("signature", sa.Text(), nullable=True),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("run_id", sa.String(255), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("rollout_id", "seq", name="uq_audit_heads_rollout_seq"),
    )
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(PG_FUNCTION)
        op.execute(
            "CREATE TRIGGER audit_heads_no_update BEFORE UPDATE OR DELETE ON audit_heads "
            "FOR EACH ROW EXECUTE FUNCTION audit_heads_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_heads_no_truncate BEFORE TRUNCATE ON audit_heads "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_heads_append_only()"
        )
    elif dialect == "sqlite":
        op.execute(
            "CREATE TRIGGER audit_heads_no_update BEFORE UPDATE ON audit_heads "
            "BEGIN SELECT RAISE(ABORT, 'audit_heads is append-only: UPDATE refused'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_heads_no_delete BEFORE DELETE ON audit_heads "
            "BEGIN SELECT RAISE(ABORT, 'audit_heads is append-only: DELETE refused'); END"
        )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_heads_no_truncate ON audit_heads")
        op.execute("DROP TRIGGER IF EXISTS audit_heads_no_update ON audit_heads")
        op.execute("DROP FUNCTION IF EXISTS audit_heads_append_only()")
    elif dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_heads_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_heads_no_delete")
    op.drop_table("audit_heads")
