"""Regenerate the SQL corpus: the statements real ORMs and checkpointers send to the driver.

    .venv/bin/python tests/sql_corpus/generate.py

Runs SQLAlchemy 2.x (Core and ORM) and Django 5.2 against SQLite, PostgreSQL
(127.0.0.1:5432, db `test`) and MariaDB (127.0.0.1:3306 root, db `test`, through PyMySQL),
and LangGraph's SQLite and PostgreSQL checkpointers, capturing every statement exactly as the
library hands it to the DB-API driver (SQLAlchemy's `before_cursor_execute`, Django's
`connection.execute_wrapper`, a recording cursor for the checkpointers) with its parameters.
Writes one JSON-lines file per dialect next to this script plus `tables.json` (each table's
primary key), which `tests/test_sql_corpus.py` checks against sqlglot. Tables are prefixed
`sqlc_` so the run never touches other tests' tables.
"""

import datetime as dt
import decimal
import json
import os
import sqlite3
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PG_DSN = os.environ.get("AGENTSTATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": "", "database": "test"}

# Primary key and other unique keys of every table the corpus touches (LangGraph's as its
# migrations create them): the reference needs them to know which row an upsert changes.
TABLES: dict[str, dict[str, list[list[str]] | list[str]]] = {
    "sqlc_users": {"pk": ["id"], "unique": [["email"]]},
    "sqlc_addresses": {"pk": ["id"], "unique": []},
    "sqlc_docs": {"pk": ["id"], "unique": [["slug"]]},
    "sqlc_lines": {"pk": ["order_id", "line_no"], "unique": []},
    "sqlc_author": {"pk": ["id"], "unique": [["slug"]]},
    "sqlc_book": {"pk": ["id"], "unique": []},
    "sqlc_tag": {"pk": ["id"], "unique": []},
    "sqlc_book_tags": {"pk": ["id"], "unique": [["book_id", "tag_id"]]},
    "checkpoints": {"pk": ["thread_id", "checkpoint_ns", "checkpoint_id"], "unique": []},
    "writes": {
        "pk": ["thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx"],
        "unique": [],
    },
    "checkpoint_blobs": {"pk": ["thread_id", "checkpoint_ns", "channel", "version"], "unique": []},
    "checkpoint_writes": {
        "pk": ["thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx"],
        "unique": [],
    },
    "checkpoint_migrations": {"pk": ["v"], "unique": []},
    "history": {"pk": ["id"], "unique": []},
    "messages": {"pk": ["id"], "unique": []},
}


def encode(value: Any) -> Any:
    """Parameters as JSON: scalars as they are, bytes tagged, other objects opaque."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (dt.date, dt.datetime, dt.time, decimal.Decimal, uuid.UUID)):
        return {"$text": str(value)}
    return {"$opaque": type(value).__name__}


class Recorder:
    def __init__(self) -> None:
        self.records: dict[str, list[dict[str, Any]]] = {
            "sqlite": [],
            "postgresql": [],
            "mysql": [],
        }
        self.source = ""
        self.case = ""

    def add(self, dialect: str, sql: str, params: Any, many: bool, paramstyle: str) -> None:
        rows = list(params) if many else [params]
        self.records[dialect].append(
            {
                "source": self.source,
                "case": self.case,
                "paramstyle": paramstyle,
                "sql": sql,
                "params": [encode(r) for r in rows[:20]],
                "many": many,
            }
        )

    @contextmanager
    def at(self, source: str, case: str) -> Iterator[None]:
        self.source, self.case = source, case
        yield

    def write(self) -> None:
        for dialect, records in self.records.items():
            seen: set[str] = set()
            lines = []
            for record in records:
                line = json.dumps(record, sort_keys=True)
                if line not in seen:
                    seen.add(line)
                    lines.append(line)
            (HERE / f"{dialect}.jsonl").write_text("\n".join(lines) + "\n")
            print(f"{dialect}: {len(lines)} statements")
        (HERE / "tables.json").write_text(json.dumps(TABLES, indent=1, sort_keys=True) + "\n")


REC = Recorder()


# --------------------------------------------------------------------------- SQLAlchemy


def sqlalchemy_corpus(dialect: str, url: str) -> None:
    from sqlalchemy import (
        ForeignKey,
        String,
        create_engine,
        delete,
        event,
        func,
        insert,
        select,
        update,
    )
    from sqlalchemy.orm import (
        DeclarativeBase,
        Mapped,
        Session,
        joinedload,
        mapped_column,
        relationship,
        selectinload,
    )

    class Base(DeclarativeBase):
        pass

    class User(Base):
        __tablename__ = "sqlc_users"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(50))
        email: Mapped[str] = mapped_column(String(80), unique=True)
        addresses: Mapped[list["Address"]] = relationship(
            back_populates="user", cascade="all, delete-orphan"
        )

    class Address(Base):
        __tablename__ = "sqlc_addresses"
        id: Mapped[int] = mapped_column(primary_key=True)
        user_id: Mapped[int] = mapped_column(ForeignKey("sqlc_users.id"))
        email: Mapped[str] = mapped_column(String(80))
        user: Mapped["User"] = relationship(back_populates="addresses")

    class Doc(Base):
        __tablename__ = "sqlc_docs"
        id: Mapped[int] = mapped_column(primary_key=True)
        slug: Mapped[str] = mapped_column(String(50), unique=True)
        body: Mapped[str] = mapped_column(String(200))

    class Line(Base):
        __tablename__ = "sqlc_lines"
        order_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        line_no: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        qty: Mapped[int]

    engine = create_engine(url)
    source = "sqlalchemy"
    paramstyle = str(engine.dialect.paramstyle)

    @event.listens_for(engine, "before_cursor_execute")
    def capture(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        if REC.case:
            REC.add(dialect, statement, params, many, paramstyle)

    REC.case = ""
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)

    def case(name: str) -> Any:
        return REC.at(source, name)

    with Session(engine) as s:
        with case("orm add"):
            s.add(User(name="ann", email="ann@x", addresses=[Address(email="a1@x")]))
            s.commit()
        with case("orm bulk add"):
            s.add_all([User(name=f"u{i}", email=f"u{i}@x") for i in range(3)])
            s.add_all([Doc(slug=f"d{i}", body="b") for i in range(3)])
            s.add_all([Line(order_id=1, line_no=i, qty=i) for i in range(3)])
            s.commit()
        with case("orm get"):
            s.expire_all()
            s.get(User, 1)
            s.get(Line, (1, 2))
        with case("orm filter"):
            s.scalars(select(User).where(User.name == "ann")).all()
            s.scalars(select(User).where(User.id.in_([1, 2, 3]))).all()
            s.scalars(select(User).filter_by(id=2, name="u0")).all()
            s.scalars(select(User).where(User.id > 1).order_by(User.id).limit(2)).all()
        with case("orm count"):
            s.scalar(select(func.count()).select_from(User).where(User.id == 1))
        with case("orm update"):
            user = s.get(User, 1)
            assert user is not None
            user.name = "anne"
            s.commit()
        with case("orm delete"):
            victim = s.scalars(select(User).where(User.name == "u2")).one()
            s.delete(victim)
            s.commit()
        with case("orm bulk update"):
            s.execute(update(User), [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
            s.commit()
        with case("orm bulk insert"):
            s.execute(insert(Doc), [{"slug": "e1", "body": "x"}, {"slug": "e2", "body": "y"}])
            s.scalars(
                insert(Doc).returning(Doc.id),
                [{"slug": "e3", "body": "x"}, {"slug": "e4", "body": "y"}],
            ).all()
            s.commit()
        with case("select for update"):
            s.scalars(select(User).where(User.id == 1).with_for_update()).all()
            s.commit()
        with case("joins"):
            s.execute(select(User.name, Address.email).join(Address).where(User.id == 1)).all()
            s.execute(select(User).join(User.addresses).where(Address.email == "a1@x")).all()
        with case("eager loads"):
            s.expire_all()
            s.scalars(select(User).options(joinedload(User.addresses))).unique().all()
            s.expire_all()
            s.scalars(select(User).options(selectinload(User.addresses))).all()
            s.expire_all()
            user = s.get(User, 1)
            assert user is not None
            _ = user.addresses  # lazy load
            s.commit()
        with case("core update delete"):
            s.execute(update(User).where(User.id == 2).values(name="bb"))
            s.execute(update(Doc).where(Doc.slug == "d0").values(body="new"))
            s.execute(delete(Doc).where(Doc.id.in_([100, 101])))
            s.execute(update(Line).where(Line.order_id == 1, Line.line_no == 0).values(qty=9))
            s.execute(
                update(User).where(User.id == 1).values(name=User.name + "!"),
                execution_options={"synchronize_session": False},
            )
            s.commit()
        with case("multi-table update delete"):
            if dialect != "sqlite":
                s.execute(
                    update(Address)
                    .where(Address.user_id == User.id, User.id == 1)
                    .values(email="moved@x"),
                    execution_options={"synchronize_session": False},
                )
                s.execute(
                    delete(Address).where(Address.user_id == User.id, User.id == 4),
                    execution_options={"synchronize_session": False},
                )
            s.commit()
        with case("upsert"):
            if dialect in ("sqlite", "postgresql"):
                if dialect == "sqlite":
                    from sqlalchemy.dialects.sqlite import insert as dialect_insert
                else:
                    from sqlalchemy.dialects.postgresql import insert as dialect_insert
                stmt = dialect_insert(Doc).values(id=50, slug="d1", body="up")
                s.execute(
                    stmt.on_conflict_do_update(index_elements=[Doc.slug], set_={"body": "up"})
                )
                stmt = dialect_insert(Doc).values(id=1, slug="z1", body="up")
                s.execute(stmt.on_conflict_do_update(index_elements=[Doc.id], set_={"body": "up"}))
                stmt = dialect_insert(Doc).values(id=2, slug="z2", body="up")
                s.execute(stmt.on_conflict_do_nothing())
            else:
                from sqlalchemy.dialects.mysql import insert as mysql_insert

                stmt = mysql_insert(Doc).values(id=50, slug="d1", body="up")
                s.execute(stmt.on_duplicate_key_update(body="up"))
                stmt = mysql_insert(Doc).values(id=3, slug="q3", body="up")
                s.execute(stmt.prefix_with("IGNORE"))
            s.commit()
    engine.dispose()


# --------------------------------------------------------------------------- Django


def django_corpus() -> None:
    import pymysql

    pymysql.version_info = (2, 2, 1, "final", 0)  # Django checks mysqlclient's version
    pymysql.install_as_MySQLdb()
    import django
    from django.conf import settings

    sqlite_file = Path(tempfile.mkdtemp()) / "django.sqlite3"
    settings.configure(
        DATABASES={
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(sqlite_file)},
            "postgresql": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": "test",
                "USER": "postgres",
                "HOST": "127.0.0.1",
                "PORT": 5432,
            },
            "mysql": {
                "ENGINE": "django.db.backends.mysql",
                "NAME": "test",
                "USER": "root",
                "PASSWORD": "",
                "HOST": "127.0.0.1",
                "PORT": 3306,
            },
        },
        INSTALLED_APPS=["django.contrib.contenttypes"],
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    django.setup()
    from django.db import connections, models, transaction
    from django.db.models import F

    class Author(models.Model):
        name = models.CharField(max_length=50)
        slug = models.CharField(max_length=50, unique=True)

        class Meta:
            app_label = "contenttypes"  # an installed app: reverse relations resolve
            db_table = "sqlc_author"

    class Tag(models.Model):
        name = models.CharField(max_length=50)

        class Meta:
            app_label = "contenttypes"  # an installed app: reverse relations resolve
            db_table = "sqlc_tag"

    class Book(models.Model):
        title = models.CharField(max_length=50)
        author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="books")
        pages = models.IntegerField(default=0)
        tags = models.ManyToManyField(Tag, db_table="sqlc_book_tags")

        class Meta:
            app_label = "contenttypes"  # an installed app: reverse relations resolve
            db_table = "sqlc_book"

    for alias, dialect in (("default", "sqlite"), ("postgresql", "postgresql"), ("mysql", "mysql")):
        conn = connections[alias]
        # A previous run's tables, dependants first (plain DROPs: in a schema editor's
        # transaction one failure would abort the rest on PostgreSQL).
        with conn.cursor() as cursor:
            for table in ("sqlc_book_tags", "sqlc_book", "sqlc_tag", "sqlc_author"):
                cursor.execute(f"DROP TABLE IF EXISTS {table}")
        with conn.schema_editor() as editor:
            for model in (Author, Tag, Book):
                editor.create_model(model)

        def wrapper(
            execute: Callable[..., Any],
            sql: str,
            params: Any,
            many: bool,
            ctx: Any,
            dialect: str = dialect,
        ) -> Any:
            if REC.case:
                text = sql
                if dialect == "sqlite":  # what Django's SQLite cursor hands sqlite3
                    from django.db.backends.sqlite3.base import FORMAT_QMARK_REGEX

                    if not isinstance(params, dict):
                        text = FORMAT_QMARK_REGEX.sub("?", sql).replace("%%", "%")
                REC.add(
                    dialect,
                    text,
                    params if params is not None else [],
                    many,
                    "qmark" if dialect == "sqlite" else "format",
                )
            return execute(sql, params, many, ctx)

        db = alias

        def case(name: str) -> Any:
            return REC.at("django", name)

        with conn.execute_wrapper(wrapper):
            with case("create"):
                a = Author.objects.using(db).create(name="ann", slug="ann")
                b = Author.objects.using(db).create(name="bob", slug="bob")
                Book.objects.using(db).create(title="t0", author=a)
            with case("get"):
                Author.objects.using(db).get(pk=a.pk)
                Author.objects.using(db).get(slug="bob")
                Author.objects.using(db).filter(pk=a.pk).exists()
            with case("filter"):
                list(Author.objects.using(db).filter(pk__in=[a.pk, b.pk]))
                list(Book.objects.using(db).filter(author__slug="ann"))
                list(Author.objects.using(db).filter(name__startswith="a").order_by("id")[:5])
                Author.objects.using(db).filter(pk=a.pk).count()
            with case("save"):
                a.name = "anne"
                a.save()
                a.save(update_fields=["name"])
            with case("update"):
                Author.objects.using(db).filter(pk=b.pk).update(name="bobby")
                Book.objects.using(db).filter(author=a).update(pages=F("pages") + 1)
            with case("bulk create"):
                books = Book.objects.using(db).bulk_create(
                    [Book(title=f"b{i}", author=a) for i in range(3)]
                )
                Tag.objects.using(db).bulk_create([Tag(name="x"), Tag(name="y")])
            with case("bulk update"):
                for book in books:
                    book.pages = 7
                Book.objects.using(db).bulk_update(books, ["pages"])
            with case("upsert"):
                Author.objects.using(db).bulk_create(
                    [Author(name="ann2", slug="ann")],
                    update_conflicts=True,
                    unique_fields=["slug"] if dialect != "mysql" else None,
                    update_fields=["name"],
                )
                Author.objects.using(db).update_or_create(slug="carl", defaults={"name": "c"})
                Author.objects.using(db).get_or_create(slug="dora", defaults={"name": "d"})
                Tag.objects.using(db).bulk_create([Tag(id=1, name="x")], ignore_conflicts=True)
            with case("select_for_update"), transaction.atomic(using=db):
                list(Author.objects.using(db).select_for_update().filter(pk=a.pk))
            with case("joins"):
                list(Book.objects.using(db).select_related("author").filter(author__pk=a.pk))
                list(Author.objects.using(db).filter(books__title="t0").distinct())
            with case("eager loads"):
                list(Author.objects.using(db).prefetch_related("books"))
                book = Book.objects.using(db).first()
                assert book is not None
                book.tags.add(*Tag.objects.using(db).all())
                list(Book.objects.using(db).prefetch_related("tags"))
            with case("delete"):
                Book.objects.using(db).get(title="b0").delete()
                Book.objects.using(db).filter(pages__gt=100).delete()
                Author.objects.using(db).get(slug="dora").delete()  # cascades to books
            REC.case = ""
        conn.close()


# --------------------------------------------------------------------------- LangGraph


class RecordingCursor:
    """A sqlite3 cursor stand-in that records what the checkpointer executes."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Any = ()) -> Any:
        REC.add("sqlite", sql, params, False, "qmark")
        self._cursor.execute(sql, params)
        return self

    def executemany(self, sql: str, rows: Any) -> Any:
        rows = list(rows)
        REC.add("sqlite", sql, rows, True, "qmark")
        self._cursor.executemany(sql, rows)
        return self

    def executescript(self, sql: str) -> Any:
        self._cursor.executescript(sql)
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def __iter__(self) -> Any:
        return iter(self._cursor)


class RecordingConnection:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def cursor(self) -> RecordingCursor:
        return RecordingCursor(self._conn.cursor())

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self.cursor().execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> Any:
        return self.cursor().executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def checkpoint_ops(saver: Any) -> None:
    from langgraph.checkpoint.base import empty_checkpoint

    config: Any = {"configurable": {"thread_id": "sqlc-t1", "checkpoint_ns": ""}}
    first = empty_checkpoint()
    first["channel_values"] = {"messages": ["hi"]}
    first["channel_versions"] = {"messages": "00001"}
    saved = saver.put(config, first, {"source": "input", "step": -1}, {"messages": "00001"})
    saver.put_writes(saved, [("messages", "hello")], "task-1")
    second = empty_checkpoint()
    second["channel_values"] = {"messages": ["hi", "there"]}
    second["channel_versions"] = {"messages": "00002"}
    saved = saver.put(saved, second, {"source": "loop", "step": 0}, {"messages": "00002"})
    saver.get_tuple(config)
    saver.get_tuple(saved)
    list(saver.list(config, limit=5))
    saver.delete_thread("sqlc-t1")


def langgraph_corpus() -> None:
    from langgraph.checkpoint.sqlite import SqliteSaver

    raw = sqlite3.connect(":memory:", check_same_thread=False)
    saver = SqliteSaver(RecordingConnection(raw))  # type: ignore[arg-type]
    REC.source, REC.case = "langgraph-sqlite", "setup"
    saver.setup()
    REC.case = "checkpoints"
    checkpoint_ops(saver)
    REC.case = ""
    raw.close()
    try:
        import psycopg
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg.rows import dict_row
    except ImportError as exc:
        print(f"langgraph-checkpoint-postgres not installed ({exc}): skipped", file=sys.stderr)
        return

    class Recording(psycopg.Cursor):  # type: ignore[type-arg]
        def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
            if REC.case:
                REC.add(
                    "postgresql", str(query), params if params is not None else [], False, "format"
                )
            return super().execute(query, params, **kw)

        def executemany(self, query: Any, params_seq: Any, **kw: Any) -> Any:
            rows = list(params_seq)
            if REC.case:
                REC.add("postgresql", str(query), rows, True, "format")
            return super().executemany(query, rows, **kw)

    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        for table in (
            "checkpoints",
            "checkpoint_blobs",
            "checkpoint_writes",
            "checkpoint_migrations",
        ):
            admin.execute(f"DROP TABLE IF EXISTS {table}")
    with psycopg.connect(
        PG_DSN, autocommit=True, prepare_threshold=0, row_factory=dict_row, cursor_factory=Recording
    ) as conn:
        saver = PostgresSaver(conn)  # type: ignore[arg-type]
        REC.source, REC.case = "langgraph-postgres", "setup"
        saver.setup()
        REC.case = "checkpoints"
        checkpoint_ops(saver)
        REC.case = ""
        for table in (
            "checkpoints",
            "checkpoint_blobs",
            "checkpoint_writes",
            "checkpoint_migrations",
        ):
            conn.execute(f"DROP TABLE IF EXISTS {table}")


def mem0_corpus() -> None:
    """mem0's history store (SQLite), as `Memory` drives it."""
    try:
        from mem0.memory.storage import SQLiteManager
    except ImportError as exc:
        print(f"mem0ai not installed ({exc}): skipped", file=sys.stderr)
        return
    manager = SQLiteManager(":memory:")
    manager.connection = RecordingConnection(manager.connection)  # type: ignore[assignment]
    REC.source, REC.case = "mem0", "history"
    manager.add_history("m1", None, "likes tea", "ADD", actor_id="a", role="user")
    manager.add_history("m1", "likes tea", "likes coffee", "UPDATE")
    manager.batch_add_history(
        [{"memory_id": "m2", "old_memory": None, "new_memory": "x", "event": "ADD"}]
    )
    manager.get_history("m1")
    manager.save_messages([{"role": "user", "content": "hi"}], "s1")
    manager.get_last_messages("s1")
    manager.reset()
    REC.case = ""


def main() -> None:
    import pymysql

    pymysql.install_as_MySQLdb()
    sqlite_file = Path(tempfile.mkdtemp()) / "sa.sqlite3"
    sqlalchemy_corpus("sqlite", f"sqlite:///{sqlite_file}")
    sqlalchemy_corpus("postgresql", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    sqlalchemy_corpus("mysql", "mysql+pymysql://root@127.0.0.1:3306/test")
    django_corpus()
    langgraph_corpus()
    mem0_corpus()
    REC.write()


if __name__ == "__main__":
    main()
