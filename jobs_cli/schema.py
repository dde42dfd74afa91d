"""Applying schema.sql, the single source of the table's definition.

The file ships inside the package (the wheel force-includes the top-level
schema.sql); a source checkout reads the top-level file itself.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psycopg

_PACKAGED = Path(__file__).with_name("schema.sql")
_SOURCE_TREE = Path(__file__).parent.parent / "schema.sql"

# Serialises concurrent `init`s (CREATE ... IF NOT EXISTS races on the catalog).
# Transaction-scoped, so it also works through PgBouncer in transaction mode.
_LOCK_KEY = "jobs-cli schema"


@cache
def schema_text() -> str:
    path = _PACKAGED if _PACKAGED.exists() else _SOURCE_TREE
    return path.read_text()


def apply_schema(conn: "psycopg.Connection", schema: str) -> list[str]:
    """Create or upgrade the jobs table in `schema`, grant the roles that exist (roles.py)
    their privileges on it; return the server's warnings.

    Warnings tell of adopted rows that break a constraint added NOT VALID.
    """
    from psycopg import sql

    from .roles import grant

    warnings: list[str] = []

    def collect(diagnostic: "psycopg.errors.Diagnostic") -> None:
        if diagnostic.severity_nonlocalized == "WARNING" and diagnostic.message_primary:
            warnings.append(diagnostic.message_primary)

    conn.add_notice_handler(collect)
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (_LOCK_KEY,))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
            conn.execute(schema_text().encode())
            grant(conn, schema)
    finally:
        conn.remove_notice_handler(collect)
    return warnings
