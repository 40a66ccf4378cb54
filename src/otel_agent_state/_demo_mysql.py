"""The demo's primary and lagging replica on a MySQL/MariaDB server (`demo --mysql-dsn`), through
PyMySQL: databases `<ns>` (primary) and `<ns>_replica`."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlparse

from opentelemetry.instrumentation.utils import suppress_instrumentation

_SCORES = "(customer_id INT PRIMARY KEY, score INT NOT NULL, version INT NOT NULL)"
_ACCOUNTS = "(account_id VARCHAR(16) PRIMARY KEY, balance INT NOT NULL, version INT NOT NULL)"


def connect_args(dsn: str, timeout: float) -> dict[str, Any]:
    """PyMySQL's connect() arguments from `mysql://user:password@host:port/database`."""
    url = urlparse(dsn)
    if url.scheme not in ("mysql", "mariadb", "mysql+pymysql"):
        raise ValueError(f"not a mysql:// URL: scheme {url.scheme!r}")
    return {
        "host": url.hostname or "127.0.0.1",
        "port": url.port or 3306,
        "user": unquote(url.username or "root"),
        "password": unquote(url.password or ""),
        "database": (url.path or "").lstrip("/") or None,
        "connect_timeout": timeout,
    }


class _Connection:
    """The psycopg-like face the demo's agents use: execute() returns the cursor."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Any = None) -> Any:
        cursor = self.raw.cursor()
        cursor.execute(sql, params)
        return cursor

    def commit(self) -> None:
        self.raw.commit()

    def rollback(self) -> None:
        self.raw.rollback()

    def close(self) -> None:
        self.raw.close()


class MySQLDatabase:
    """Database `<ns>` (primary) and `<ns>_replica` (a lagging copy)."""

    placeholder = "%s"

    def __init__(
        self,
        dsn: str,
        schema: str,
        replica_schema: str,
        where: str,
        timeout: float,
        seed_row: tuple[int, int],
    ) -> None:
        self.args = connect_args(dsn, timeout)
        self.customer, self.score = seed_row
        self.schema = schema
        self.replica_schema = replica_schema
        self.where = f"{where} (databases {schema}, {replica_schema})"

    def connect(self, which: str = "primary", autocommit: bool = True) -> _Connection:
        import pymysql

        return _Connection(pymysql.connect(**self.args, autocommit=autocommit))

    def table(self, name: str, which: str = "primary") -> str:
        return f"{self.schema if which == 'primary' else self.replica_schema}.{name}"

    def seed(self) -> None:
        """Create the databases once, reset the demo rows; made without telemetry."""
        with suppress_instrumentation():
            conn = self.connect()
            try:
                for schema in (self.schema, self.replica_schema):
                    conn.execute(f"CREATE DATABASE IF NOT EXISTS {schema}")
                    conn.execute(f"CREATE TABLE IF NOT EXISTS {schema}.credit_scores {_SCORES}")
                conn.execute(f"CREATE TABLE IF NOT EXISTS {self.schema}.accounts {_ACCOUNTS}")
                conn.execute(
                    f"REPLACE INTO {self.schema}.credit_scores VALUES (%s, %s, 1)",
                    (self.customer, self.score),
                )
                conn.execute(
                    f"REPLACE INTO {self.schema}.accounts VALUES ('A', 1000, 1), ('B', 0, 1)"
                )
            finally:
                conn.close()
        self.replicate()  # the replica starts in sync

    def replicate(self) -> None:
        """Copy the demo's credit score to the replica database (infrastructure, untraced)."""
        with suppress_instrumentation():
            conn = self.connect()
            try:
                conn.execute(
                    f"REPLACE INTO {self.replica_schema}.credit_scores "
                    f"SELECT customer_id, score, version FROM {self.schema}.credit_scores "
                    "WHERE customer_id = %s",
                    (self.customer,),
                )
            finally:
                conn.close()

    def close(self) -> None:
        pass
