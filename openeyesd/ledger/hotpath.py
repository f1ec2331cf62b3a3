"""How the ledger's hot-path statements (``statements.py``) are executed.

Two ways, one interface (``HotTransaction``), chosen once per ``Ledger``:

- ``EngineHotPath``: through SQLAlchemy, every dialect (PostgreSQL always).
- ``DriverHotPath``: SQLite's default. The same prebuilt statement objects, compiled ONCE by
  SQLAlchemy for the SQLite dialect (SQL text, parameter order, literal values), with
  SQLAlchemy's own bind and result processors for every typed value (``UTCDateTime`` becomes
  the naive UTC string SQLite stores, and comes back aware), executed on the driver
  connection of a pooled connection. What it skips is SQLAlchemy's per-execution machinery
  (Connection, execution context, result objects, event dispatch), which was ~80 % of the time
  of a no-op job (``bench/README.md``). No SQL is written by hand here, and none anywhere
  else: a statement changed in ``statements.py`` changes both paths.

``tests/unit/test_hotpath.py`` runs every hot-path statement both ways on twin databases and
compares what is stored and what comes back; ``tests/unit/test_ledger.py`` runs the whole
ledger contract on both.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, NoResultFound

Params = Mapping[str, Any]
Processor = Callable[[Any], Any] | None


class HotTransaction(Protocol):
    """One write transaction of a hot path."""

    def first(self, statement: Any, params: Params) -> Mapping[str, Any] | None:
        """The first row the statement returns (SELECT or RETURNING), or None."""
        ...

    def one(self, statement: Any, params: Params) -> Mapping[str, Any]:
        """The first row; NoResultFound when there is none."""
        ...

    def rowcount(self, statement: Any, params: Params) -> int: ...

    def many(self, statement: Any, rows: Sequence[Params]) -> None:
        """The statement once per parameter set (executemany)."""
        ...


class HotPath(Protocol):
    def write(self) -> AbstractContextManager[HotTransaction]:
        """A write transaction: committed on a normal exit, rolled back on an error."""
        ...


def hot_path_for(engine: Engine, write_engine: Engine, *, on_driver: bool | None) -> HotPath:
    """``on_driver``: None = on the driver where the dialect allows it (SQLite)."""
    if on_driver is None:
        on_driver = engine.dialect.name == "sqlite"
    if on_driver and engine.dialect.name != "sqlite":
        raise ValueError(f"only SQLite runs the hot path on the driver, not {engine.dialect.name}")
    return DriverHotPath(engine) if on_driver else EngineHotPath(write_engine)


# -- through SQLAlchemy ---------------------------------------------------------------------


class EngineTransaction:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def first(self, statement: Any, params: Params) -> Mapping[str, Any] | None:
        row = self._conn.execute(statement, params).first()
        return None if row is None else row._mapping

    def one(self, statement: Any, params: Params) -> Mapping[str, Any]:
        return _required(self.first(statement, params))

    def rowcount(self, statement: Any, params: Params) -> int:
        return int(self._conn.execute(statement, params).rowcount)

    def many(self, statement: Any, rows: Sequence[Params]) -> None:
        self._conn.execute(statement, list(rows))


class EngineHotPath:
    def __init__(self, write_engine: Engine) -> None:
        # The write engine's "begin" listener opens the transaction with BEGIN IMMEDIATE.
        self._engine = write_engine

    @contextmanager
    def write(self) -> Iterator[EngineTransaction]:
        with self._engine.connect() as conn, conn.begin():
            yield EngineTransaction(conn)


# -- on SQLite's driver ---------------------------------------------------------------------


@dataclass(frozen=True)
class Precompiled:
    """A statement as SQLAlchemy compiled it for one dialect, ready for the DB-API cursor."""

    statement: Any
    sql: str
    #: Per ``?``, in order: (parameter name, None) for a value the caller gives, or
    #: (None, value) for a literal of the statement, already bind-processed.
    slots: tuple[tuple[str | None, Any], ...]
    #: Each parameter the caller gives, with its bind processor (None: passed as is).
    inputs: tuple[tuple[str, Processor], ...]
    #: The names of the columns it returns (SELECT or RETURNING), and (position, name, result
    #: processor) of those that need converting (the datetimes; the rest come as they are).
    columns: tuple[str, ...]
    converted: tuple[tuple[int, str, Callable[[Any], Any]], ...]
    #: For an INSERT: the keys it was compiled for (its VALUES list depends on them).
    column_keys: frozenset[str] | None

    def values(self, params: Params) -> tuple[Any, ...]:
        if self.column_keys is not None and params.keys() != self.column_keys:
            raise ValueError(f"compiled for {sorted(self.column_keys)}, given {sorted(params)}")
        given = {name: params[name] if p is None else p(params[name]) for name, p in self.inputs}
        return tuple(value if name is None else given[name] for name, value in self.slots)

    def row(self, raw: Sequence[Any]) -> dict[str, Any]:
        values = dict(zip(self.columns, raw, strict=True))
        for position, name, processor in self.converted:
            values[name] = processor(raw[position])
        return values


def precompile(statement: Any, dialect: Dialect, *, column_keys: Sequence[str] = ()) -> Precompiled:
    """Compile ``statement`` once. ``column_keys``: an INSERT's parameter names."""
    compiled = statement.compile(dialect=dialect, column_keys=list(column_keys) or None)
    if compiled.positiontup is None or "__[POSTCOMPILE" in compiled.string:
        # Expanding IN lists and the like are rendered per execution: not for this path.
        raise ValueError("only positional statements without per-execution rendering")
    slots: list[tuple[str | None, Any]] = []
    inputs: dict[str, Processor] = {}
    for name in compiled.positiontup:
        bind = compiled.binds[name]
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if bind.required:
            inputs[name] = processor
            slots.append((name, None))
        else:
            value = bind.effective_value
            slots.append((None, value if processor is None else processor(value)))
    columns = tuple(statement.exported_columns)
    converted = []
    for position, column in enumerate(columns):
        processor = column.type.dialect_impl(dialect).result_processor(dialect, None)
        if processor is not None:
            converted.append((position, column.key, processor))
    return Precompiled(
        statement=statement,
        sql=compiled.string,
        slots=tuple(slots),
        inputs=tuple(inputs.items()),
        columns=tuple(column.key for column in columns),
        converted=tuple(converted),
        column_keys=frozenset(column_keys) if statement.is_insert else None,
    )


class DriverTransaction:
    def __init__(self, cursor: sqlite3.Cursor, compiled: Callable[..., Precompiled]) -> None:
        self._cursor = cursor
        self._compiled = compiled

    def first(self, statement: Any, params: Params) -> Mapping[str, Any] | None:
        pc = self._compiled(statement, params)
        raw = _translated(pc.sql, params, self._cursor.execute, pc.sql, pc.values(params))
        found = raw.fetchone()
        # A RETURNING statement is only complete once its rows are read to the end.
        raw.fetchall()
        return None if found is None else pc.row(found)

    def one(self, statement: Any, params: Params) -> Mapping[str, Any]:
        return _required(self.first(statement, params))

    def rowcount(self, statement: Any, params: Params) -> int:
        pc = self._compiled(statement, params)
        return int(_translated(pc.sql, params, self._cursor.execute, pc.sql,
                               pc.values(params)).rowcount)

    def many(self, statement: Any, rows: Sequence[Params]) -> None:
        if not rows:
            return
        pc = self._compiled(statement, rows[0])
        _translated(pc.sql, rows, self._cursor.executemany, pc.sql,
                    [pc.values(row) for row in rows])


class DriverHotPath:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._dialect = engine.dialect
        self._cache: dict[int, Precompiled] = {}
        self._lock = threading.Lock()

    def compiled(self, statement: Any, params: Params) -> Precompiled:
        """Compiled on first use (the statements live as long as their Ledger)."""
        found = self._cache.get(id(statement))
        if found is None or found.statement is not statement:
            keys = list(params) if statement.is_insert else ()
            found = precompile(statement, self._dialect, column_keys=keys)
            with self._lock:
                self._cache[id(statement)] = found
        return found

    @contextmanager
    def write(self) -> Iterator[DriverTransaction]:
        # A pooled connection, as SQLAlchemy's own path would use: same PRAGMAs (the engine's
        # "connect" listener), same pool limits, released by engine.dispose().
        pooled = self._engine.raw_connection()
        try:
            driver = pooled.driver_connection
            assert isinstance(driver, sqlite3.Connection)
            # The connect listener set isolation_level=None: the driver leaves transaction
            # control to us. IMMEDIATE takes the write lock up front (engine.py says why).
            _translated("BEGIN IMMEDIATE", {}, driver.execute, "BEGIN IMMEDIATE")
            try:
                yield DriverTransaction(driver.cursor(), self.compiled)
            except BaseException:
                driver.rollback()
                raise
            _translated("COMMIT", {}, driver.commit)
        finally:
            pooled.close()


def _required(row: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if row is None:
        raise NoResultFound("the statement returned no row where one was required")
    return row


def _translated(sql: str, params: Any, call: Callable[..., Any], *args: Any) -> Any:
    """Run ``call``, raising driver errors as SQLAlchemy's exception classes (IntegrityError,
    OperationalError, ...), as the SQLAlchemy path does: callers catch one family."""
    try:
        return call(*args)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, params, exc, sqlite3.Error) from exc
