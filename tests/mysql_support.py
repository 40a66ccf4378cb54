"""One face for the three MySQL clients in the tests: PyMySQL, mysqlclient, aiomysql (each
aiomysql connection runs on an event loop of its own, so threads can hold one each)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

CLIENTS = ["pymysql", "mysqlclient", "aiomysql"]

INSTRUMENTORS = {
    "pymysql": ("otel_agent_state.instrumentation.pymysql", "PyMySQLInstrumentor"),
    "mysqlclient": ("otel_agent_state.instrumentation.mysqlclient", "MySQLClientInstrumentor"),
    "aiomysql": ("otel_agent_state.instrumentation.aiomysql", "AioMySQLInstrumentor"),
}


def params(dsn: str) -> dict[str, Any]:
    url = urlparse(dsn)
    return {
        "host": url.hostname or "127.0.0.1",
        "port": url.port or 3306,
        "user": url.username or "root",
        "password": url.password or "",
        "database": (url.path or "/test").lstrip("/") or "test",
    }


def module(client: str) -> Any:
    import importlib

    return importlib.import_module(INSTRUMENTORS[client][0])


def instrumentor(client: str) -> Any:
    _, cls = INSTRUMENTORS[client]
    return getattr(module(client), cls)()


def unique_prefix() -> str:
    return f"myi_{uuid.uuid4().hex[:8]}_"


class Conn:
    """A connection of one client with blocking calls."""

    def __init__(
        self,
        client: str,
        dsn: str,
        *,
        autocommit: bool = True,
        tier: str | None = None,
        database: str | None = None,
    ) -> None:
        self.client = client
        p = params(dsn)
        if database is not None:
            p["database"] = database
        self.loop: asyncio.AbstractEventLoop | None = None
        if client == "pymysql":
            import pymysql

            self.raw: Any = pymysql.connect(**p, autocommit=autocommit)
        elif client == "mysqlclient":
            import MySQLdb

            p["db"] = p.pop("database")
            p["passwd"] = p.pop("password")
            self.raw = MySQLdb.connect(**p, autocommit=autocommit)
        else:
            import aiomysql

            p["db"] = p.pop("database")
            self.loop = asyncio.new_event_loop()
            self.raw = self._wait(aiomysql.connect(**p, autocommit=autocommit))
        if tier is not None:
            module(client).instrument_connection(self.raw, tier=tier)

    def _wait(self, coro: Any) -> Any:
        assert self.loop is not None
        return self.loop.run_until_complete(_resolve(coro))

    def cursor(self, kind: str = "") -> Any:
        """A cursor of the client's `kind` ("", "dict", "ss": unbuffered)."""
        if self.client == "pymysql":
            import pymysql.cursors as pc

            cls = {"": pc.Cursor, "dict": pc.DictCursor, "ss": pc.SSCursor}[kind]
            return self.raw.cursor(cls)
        if self.client == "mysqlclient":
            import MySQLdb.cursors as mc

            cls = {"": mc.Cursor, "dict": mc.DictCursor, "ss": mc.SSCursor}[kind]
            return self.raw.cursor(cls)
        import aiomysql

        cls = {"": aiomysql.Cursor, "dict": aiomysql.DictCursor, "ss": aiomysql.SSCursor}[kind]
        return _AsyncCursor(self, self._wait(self.raw.cursor(cls)))

    def execute(self, sql: str, args: Any = None, kind: str = "") -> Any:
        cursor = self.cursor(kind)
        cursor.execute(sql, args)
        return cursor

    def one(self, sql: str, args: Any = None) -> Any:
        cursor = self.execute(sql, args)
        row = cursor.fetchone()
        cursor.close()
        return row

    def all(self, sql: str, args: Any = None) -> list[Any]:
        cursor = self.execute(sql, args)
        rows = list(cursor.fetchall())
        cursor.close()
        return rows

    def call(self, name: str, *args: Any) -> Any:
        result = getattr(self.raw, name)(*args)
        return self._wait(result) if self.loop is not None and _awaitable(result) else result

    def commit(self) -> None:
        self.call("commit")

    def rollback(self) -> None:
        self.call("rollback")

    def begin(self) -> None:
        if self.client == "mysqlclient":
            self.raw.begin()
        else:
            self.call("begin")

    def close(self) -> None:
        if self.loop is not None:
            self._wait(self.raw.ensure_closed())
            self.loop.close()
        else:
            self.raw.close()


def _awaitable(value: Any) -> bool:
    import inspect

    return inspect.isawaitable(value)


class _AsyncCursor:
    def __init__(self, conn: Conn, cursor: Any) -> None:
        self.conn = conn
        self.raw = cursor

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.raw, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            return self.conn._wait(_resolve(result)) if _awaitable(result) else result

        return call

    def __iter__(self) -> Iterator[Any]:
        while True:
            row = self.fetchone()
            if row is None:
                return
            yield row


async def _resolve(value: Any) -> Any:
    return await value


@contextmanager
def plain(dsn: str) -> Iterator[Any]:
    """An untraced PyMySQL connection (set-up, checks), autocommit."""
    import pymysql
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        conn = pymysql.connect(**params(dsn), autocommit=True)
        try:
            yield conn
        finally:
            conn.close()


def sql(dsn: str, *statements: str) -> list[Any]:
    """Run statements untraced; the rows of the last."""
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with plain(dsn) as conn, suppress_instrumentation():
        cursor = conn.cursor()
        # A connection a failed test left in a transaction must not hang the clean-up.
        cursor.execute("SET SESSION lock_wait_timeout = 10")
        for statement in statements:
            cursor.execute(statement)
        return list(cursor.fetchall())
