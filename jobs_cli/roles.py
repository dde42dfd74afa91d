"""Least privilege: the jobs_writer and jobs_reader roles and what they may do.

`jobs-cli init --roles` creates both roles (NOLOGIN, idempotently); a DBA then
makes each host's login role a member of one of them:

    CREATE ROLE etl LOGIN IN ROLE jobs_writer;       -- records runs
    CREATE ROLE grafana LOGIN IN ROLE jobs_reader;   -- dashboards, checks

jobs_writer may read, insert and update runs (and take ids from their
sequences); it may not DELETE, TRUNCATE or change the schema, so a stolen ETL
credential cannot erase the history. jobs_reader may only read.

GRANTS is the one list of relations and privileges: whoever adds a table or a
view adds it here. `grant` grants what it lists on each listed relation that
exists, plus USAGE on the schema and on the sequences owned by the relations
the writer inserts into. It runs after every schema change (and with
`init --roles`), adds only what is missing (nothing to do: nothing written, no
lock taken), and never revokes: a privilege a DBA granted by hand stays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import PermissionDenied

if TYPE_CHECKING:
    import psycopg

WRITER = "jobs_writer"
READER = "jobs_reader"
ROLES = (WRITER, READER)

READ = ("SELECT",)
WRITE = ("SELECT", "INSERT", "UPDATE")


@dataclass(frozen=True)
class Grant:
    relation: str  # a table or view next to jobs, in the same schema
    writer: tuple[str, ...]
    reader: tuple[str, ...] = READ


GRANTS: tuple[Grant, ...] = (
    Grant("jobs", writer=WRITE),
    Grant("jobs_latest", writer=READ),
    Grant("jobs_cli_migrations", writer=READ),
    # Kept by SECURITY DEFINER triggers: the writer's runs update it without a grant.
    Grant("jobs_summary", writer=READ),
    # `jobs-cli reset` adds a row; none is ever changed.
    Grant("jobs_resets", writer=("SELECT", "INSERT")),
)

_EXISTING_ROLES = "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)"
# Sequences that belong to a column of the relation (serial, identity).
_OWNED_SEQUENCES = """
SELECT s.oid FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
WHERE d.classid = 'pg_class'::regclass AND d.refobjid = %s AND d.deptype IN ('a', 'i')
"""


def create_roles(conn: "psycopg.Connection") -> list[str]:
    """Create jobs_writer and jobs_reader where missing (NOLOGIN); return those created."""
    import psycopg
    from psycopg import sql

    existing = {row[0] for row in conn.execute(_EXISTING_ROLES, (list(ROLES),))}
    created = []
    for role in ROLES:
        if role in existing:
            continue
        try:
            with conn.transaction():
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        except psycopg.errors.DuplicateObject:
            continue  # roles are cluster-wide: a concurrent init made it
        except psycopg.errors.InsufficientPrivilege:
            raise PermissionDenied(f"cannot create roles {WRITER} and {READER}: that needs "
                                   "CREATEROLE; ask a DBA to run `jobs-cli init --roles`") from None
        created.append(role)
    return created


def grant(conn: "psycopg.Connection", schema: str) -> None:
    """Grant the roles that exist what GRANTS lists, on the relations of `schema` that exist.

    Run it in the transaction that changed the schema, under its lock:
    concurrent GRANTs on one object fail with "tuple concurrently updated".
    """
    from psycopg import sql

    roles = [row[0] for row in conn.execute(_EXISTING_ROLES, (list(ROLES),))]
    for role in roles:
        if not _has(conn, "schema", role, schema, "USAGE"):
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(schema), sql.Identifier(role)))
    for item in GRANTS:
        relation = conn.execute("SELECT to_regclass(%s)::oid",
                                (sql.Identifier(schema, item.relation).as_string(conn),)
                                ).fetchone()[0]
        if relation is None:
            continue
        for role in roles:
            privileges = item.writer if role == WRITER else item.reader
            missing = [p for p in privileges if not _has(conn, "table", role, relation, p)]
            if missing:
                conn.execute(sql.SQL("GRANT {} ON TABLE {} TO {}").format(
                    sql.SQL(", ").join(map(sql.SQL, missing)),
                    sql.Identifier(schema, item.relation), sql.Identifier(role)))
            if "INSERT" not in privileges:
                continue
            for (sequence,) in conn.execute(_OWNED_SEQUENCES, (relation,)).fetchall():
                if not _has(conn, "sequence", role, sequence, "USAGE"):
                    conn.execute(sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(
                        sql.SQL(_regclass_name(conn, sequence)), sql.Identifier(role)))


def _has(conn: "psycopg.Connection", kind: str, role: str, target: object, privilege: str) -> bool:
    check = {"schema": "has_schema_privilege(%s, %s, %s)",
             "table": "has_table_privilege(%s, %s::oid, %s)",
             "sequence": "has_sequence_privilege(%s, %s::oid, %s)"}[kind]
    return conn.execute(f"SELECT {check}", (role, target, privilege)).fetchone()[0]


def _regclass_name(conn: "psycopg.Connection", oid: int) -> str:
    """The relation's name as the server spells it: quoted, schema-qualified when needed."""
    return conn.execute("SELECT %s::oid::regclass::text", (oid,)).fetchone()[0]
