"""The inspection log: every decision the app or the REST API makes, and its review.

One row per decision (time, image SHA-256, file name, task, channel, model and weights
fingerprint, thresholds in force, the answer, its scores, the unknown/defective flags), and the
reviews people give the flagged ones. Any SQLAlchemy URL works; by default an SQLite file in the
user's data folder (``$VISPECT_DATA``, else ``~/.local/share/vispect``), in WAL mode so requests
writing at once all get their row. PostgreSQL is tested too (``tests/test_inspection_log.py``).

Serving writes the log and ``train.reviewed`` reads it, hence ``common/``.

A log that cannot be written makes the caller fail with :class:`InspectionLogError`, naming the
database (password hidden) and the fix: a decision is never silently left unlogged.

The schema is created on first use and carries its version in ``schema_version``; a database
written by a newer release is refused rather than misread. A later release that changes the
tables adds its step to ``_MIGRATIONS``.

>>> log = InspectionLog.open("sqlite:///inspections.db")  # doctest: +SKIP
>>> log.record(decision, image_bytes)  # doctest: +SKIP
1
"""

from __future__ import annotations

import builtins
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    create_engine,
    event,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator

from common.image_store import store_image, stored_name

SCHEMA_VERSION = 1
DATA_ENV = "VISPECT_DATA"
DATABASE_FILE = "inspections.db"
IMAGES_FOLDER = "images"
TASKS = ("classify", "segment", "anomaly")
# Why a decision waits for review: the open-set rule said "none of the classes", the top score was
# below the low-confidence threshold, defects were found, or two models disagreed.
FLAGS = ("unknown", "low_confidence", "defective", "disagree")
# How long an SQLite writer waits for another one to commit before giving up (milliseconds).
SQLITE_BUSY_TIMEOUT_MS = 30_000
# How long a server connection attempt may take (seconds): a database that is down fails the request
# with a message instead of hanging it.
CONNECT_TIMEOUT_S = 10
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# PostgreSQL advisory lock taken while the schema is created ("visp" in ASCII).
_SCHEMA_LOCK_KEY = 0x76697370
# Each migration takes the database from version n to n + 1 (none yet: version 1 is the first).
_MIGRATIONS: dict[int, Callable[[Connection], None]] = {}


class InspectionLogError(RuntimeError):
    """The inspection log cannot be opened, read or written; the message names the database and the fix."""


def data_dir() -> Path:
    """The user's data folder: ``$VISPECT_DATA``, else ``$XDG_DATA_HOME/vispect``, else ``~/.local/share/vispect``."""
    configured = os.environ.get(DATA_ENV)
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "vispect"


def default_url() -> str:
    """``sqlite:///<data dir>/inspections.db``."""
    return f"sqlite:///{data_dir() / DATABASE_FILE}"


# -- what is recorded -------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """One decision to record: what was asked of which model, and what it answered.

    ``answer`` is the label (classification) or a one-line summary (segmentation: the defect
    classes found, or "clean"); ``scores`` is JSON-ready (plain floats and strings). ``flags``
    are names from :data:`FLAGS`; a decision with any flag waits in the review queue.
    """

    task: str
    channel: str
    image_sha256: str
    model_source: str
    answer: str
    file_name: str | None = None
    model_fingerprint: str | None = None
    thresholds: dict = field(default_factory=dict)
    confidence: float | None = None
    scores: dict = field(default_factory=dict)
    unknown: bool = False
    defective: bool | None = None
    flags: tuple[str, ...] = ()

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"Decision task {self.task!r} is not one of {TASKS}")
        if not _SHA256.match(self.image_sha256 or ""):
            raise ValueError(f"Decision image_sha256 must be 64 lowercase hex digits, got {self.image_sha256!r}")
        wrong = [flag for flag in self.flags if flag not in FLAGS]
        if wrong:
            raise ValueError(f"Decision flags {wrong} are not among {FLAGS}")
        if not self.channel:
            raise ValueError("Decision channel must name the tab or 'api' that made it")


@dataclass(frozen=True)
class Review:
    """A person's verdict on a decision: ``accepted`` the answer, or set ``label`` instead.

    ``label`` is the class the image really shows; None for an accepted "unknown" (the image is of
    none of the classes).
    """

    label: str | None
    accepted: bool
    reviewer: str
    created_at: datetime


@dataclass(frozen=True)
class Inspection:
    """A logged decision as read back, with its latest review (None while unreviewed)."""

    id: int
    created_at: datetime
    task: str
    channel: str
    image_sha256: str
    file_name: str | None
    model_source: str
    model_fingerprint: str | None
    thresholds: dict
    answer: str
    confidence: float | None
    scores: dict
    unknown: bool
    defective: bool | None
    flags: tuple[str, ...]
    image_stored: bool
    image_file: str | None  # relative to the image store
    review: Review | None = None

    @property
    def flagged(self) -> bool:
        return bool(self.flags)


# -- tables -----------------------------------------------------------------------------------


class UTCDateTime(TypeDecorator):
    """Naive UTC in the database on every backend (SQLite has no time zones), aware UTC in Python."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class InspectionRow(Base):
    __tablename__ = "inspections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    file_name: Mapped[str | None] = mapped_column(String(1000))
    task: Mapped[str] = mapped_column(String(20), index=True)
    channel: Mapped[str] = mapped_column(String(40))
    model_source: Mapped[str] = mapped_column(String(1000), index=True)
    model_fingerprint: Mapped[str | None] = mapped_column(String(200))
    thresholds: Mapped[dict] = mapped_column(JSON)
    answer: Mapped[str] = mapped_column(String(1000))
    confidence: Mapped[float | None] = mapped_column(Float)
    scores: Mapped[dict] = mapped_column(JSON)
    unknown: Mapped[bool] = mapped_column(Boolean)
    defective: Mapped[bool | None] = mapped_column(Boolean)
    # Comma-separated names from FLAGS ("" for none); `flagged` is kept beside it for the queue's index.
    flags: Mapped[str] = mapped_column(String(200))
    flagged: Mapped[bool] = mapped_column(Boolean, index=True)
    image_stored: Mapped[bool] = mapped_column(Boolean)
    image_file: Mapped[str | None] = mapped_column(String(200))


class ReviewRow(Base):
    """Reviews are appended, never updated: the latest one per inspection is its verdict, the rest its history."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    inspection_id: Mapped[int] = mapped_column(ForeignKey("inspections.id"), index=True)
    label: Mapped[str | None] = mapped_column(String(1000))
    accepted: Mapped[bool] = mapped_column(Boolean)
    reviewer: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SchemaVersionRow(Base):
    __tablename__ = "schema_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1: the table holds one row
    version: Mapped[int] = mapped_column(Integer)


# -- the log ----------------------------------------------------------------------------------


def _flag_filter(flag: str):
    """Rows whose comma list holds ``flag`` exactly ("_" escaped: it is a LIKE wildcard)."""
    escaped = flag.replace("_", "\\_")
    column = InspectionRow.flags
    return or_(
        column == flag,
        column.like(f"{escaped},%", escape="\\"),
        column.like(f"%,{escaped}", escape="\\"),
        column.like(f"%,{escaped},%", escape="\\"),
    )


def _reason(error: BaseException) -> str:
    """The driver's own first line (``connection refused``, ``unable to open database file``)."""
    detail = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    text = str(detail).strip().splitlines()
    return text[0] if text else type(detail).__name__


class InspectionLog:
    """The log behind one SQLAlchemy engine; thread-safe (one session per call).

    Use :meth:`open`, which creates the schema on first use and checks its version.
    """

    def __init__(self, engine: Engine, store_dir: str | os.PathLike, store_images: bool = False):
        self.engine = engine
        self.store_dir = Path(store_dir)
        self.store_images = store_images
        self.is_sqlite = engine.dialect.name == "sqlite"
        # SQLite writers take the write lock when their transaction begins (see _sqlite_events).
        self._writer = engine.execution_options(vispect_begin="IMMEDIATE") if self.is_sqlite else engine

    @property
    def url(self) -> str:
        """The database URL with its password hidden, for messages."""
        return self.engine.url.render_as_string(hide_password=True)

    @classmethod
    def open(
        cls, url: str | URL | None = None, store_dir: str | os.PathLike | None = None, store_images: bool = False
    ) -> InspectionLog:
        """Open (and on first use create) the log at ``url``.

        Args:
            url: Any SQLAlchemy URL (``postgresql+psycopg://user:password@host/db``); None: an SQLite
                file in the data folder (:func:`default_url`), created with its folder.
            store_dir: Where :meth:`record` keeps images when ``store_images`` is on; None:
                ``<data dir>/images``.
            store_images: Keep each decided image in ``store_dir`` (off by default: the log then
                holds hashes, not pictures).

        Raises:
            InspectionLogError: a malformed URL, a database that cannot be reached or written, or
                one written by a newer release.
        """
        if url is None:
            url = default_url()
            try:
                data_dir().mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise InspectionLogError(
                    f"Cannot create the inspection log's folder {data_dir()}: {error.strerror}. "
                    f"Set {DATA_ENV} to a writable folder, or pass --log-db URL."
                ) from error
        try:
            parsed = make_url(url)
        except ArgumentError as error:
            raise InspectionLogError(
                f"--log-db {url!r} is not a database URL: {error}. "
                "Give one like sqlite:////path/to/inspections.db or postgresql+psycopg://user@host/database."
            ) from error
        try:
            engine = _create_engine(parsed)
        except (SQLAlchemyError, ImportError) as error:
            raise InspectionLogError(
                f"Cannot use the inspection log database {parsed.render_as_string(hide_password=True)}: "
                f"{_reason(error)}. Install its driver (PostgreSQL: psycopg) or pass another --log-db URL."
            ) from error
        log = cls(engine, store_dir if store_dir is not None else data_dir() / IMAGES_FOLDER, store_images)
        log._prepare_schema()
        return log

    def close(self) -> None:
        self.engine.dispose()

    # -- errors --

    def _fix(self) -> str:
        if self.is_sqlite:
            return (
                "Check that its folder exists and is writable and the disk has room, "
                "or pass --log-db with another database URL."
            )
        return (
            "Check that the database server is running and reachable from here and that the user, password and "
            "database name are right, or pass --log-db with another database URL."
        )

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Any database or file error inside becomes an :class:`InspectionLogError` naming this log."""
        try:
            yield
        except InspectionLogError:
            raise
        except (SQLAlchemyError, OSError) as error:
            raise InspectionLogError(
                f"Cannot {action} the inspection log at {self.url}: {_reason(error)}. {self._fix()}"
            ) from error

    # -- schema --

    def _prepare_schema(self) -> None:
        with self._errors("open"):
            try:
                self._create_or_check()
            except (IntegrityError, ProgrammingError, OperationalError):
                # Another process created the tables at the same moment (a backend without the lock
                # below); the second look finds them.
                self._create_or_check()

    def _create_or_check(self) -> None:
        with self._writer.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Processes starting together would each see no tables and CREATE them; the second
                # fails with "relation already exists". The lock is released when this transaction ends.
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
            Base.metadata.create_all(connection)
            version = connection.execute(select(SchemaVersionRow.version)).scalar()
            if version is None:
                connection.execute(SchemaVersionRow.__table__.insert().values(id=1, version=SCHEMA_VERSION))
                return
            if version > SCHEMA_VERSION:
                raise InspectionLogError(
                    f"The inspection log at {self.url} has schema version {version}, written by a newer release; "
                    f"this one knows versions up to {SCHEMA_VERSION} and cannot downgrade it. Upgrade this "
                    "installation, or pass --log-db with another database."
                )
            while version < SCHEMA_VERSION:
                _MIGRATIONS[version](connection)
                version += 1
                connection.execute(SchemaVersionRow.__table__.update().values(version=version))

    def schema_version(self) -> int:
        with self._errors("read"), Session(self.engine) as session:
            return session.scalar(select(SchemaVersionRow.version))

    # -- writing --

    def record(self, decision: Decision, image_bytes: bytes | None = None) -> int:
        """Add one decision (and, when storing images, its image); returns the new row's id.

        The image goes into the store first: a row never points at a missing file, and a file whose
        row failed is harmless (the next identical upload reuses it).

        Raises:
            InspectionLogError: the row or the image could not be written; nothing was recorded.
            ValueError: ``image_bytes`` whose SHA-256 is not ``decision.image_sha256``.
        """
        return self.record_many([(decision, image_bytes)])[0]

    def record_many(self, decisions: Sequence[tuple[Decision, bytes | None]]) -> builtins.list[int]:
        """Add several decisions, each with its image bytes (or None), in one transaction; returns their ids.

        A batch costs one commit instead of one per image (the Inspect tab writes its images this
        way); either every row is written or none is.

        Raises:
            InspectionLogError: a row or an image could not be written; no row was recorded.
            ValueError: image bytes whose SHA-256 is not their decision's ``image_sha256``.
        """
        rows = [self._row(decision, image_bytes) for decision, image_bytes in decisions]
        if not rows:
            return []
        with self._errors("write to"), Session(self._writer) as session, session.begin():
            session.add_all(rows)
            session.flush()
            return [row.id for row in rows]

    def _row(self, decision: Decision, image_bytes: bytes | None) -> InspectionRow:
        """The row of a decision, its image stored first when the log keeps images."""
        image_file = None
        if self.store_images and image_bytes is not None:
            with self._errors(f"store the image in {self.store_dir} for"):
                store_image(self.store_dir, image_bytes, decision.image_sha256)
            image_file = stored_name(decision.image_sha256, image_bytes)
        return InspectionRow(
            created_at=datetime.now(UTC),
            image_sha256=decision.image_sha256,
            file_name=decision.file_name,
            task=decision.task,
            channel=decision.channel,
            model_source=decision.model_source,
            model_fingerprint=decision.model_fingerprint,
            thresholds=decision.thresholds,
            answer=decision.answer,
            confidence=None if decision.confidence is None else float(decision.confidence),
            scores=decision.scores,
            unknown=bool(decision.unknown),
            defective=None if decision.defective is None else bool(decision.defective),
            flags=",".join(dict.fromkeys(decision.flags)),
            flagged=bool(decision.flags),
            image_stored=image_file is not None,
            image_file=image_file,
        )

    def review(self, inspection_id: int, label: str | None, reviewer: str, accepted: bool) -> Review:
        """Store a person's verdict on a decision; a later review of the same one replaces it.

        Args:
            inspection_id: The decision's id.
            label: The right label when not ``accepted``; ignored when ``accepted`` (the answer is
                the label then, or none for an accepted "unknown").
            reviewer: Who reviewed, as typed.
            accepted: The answer was right.

        Raises:
            ValueError: no reviewer, no label for a correction, or no such decision.
            InspectionLogError: the database cannot be written.
        """
        reviewer = (reviewer or "").strip()
        if not reviewer:
            raise ValueError("A review needs the reviewer's name: type it in once, it is kept for the session.")
        label = (label or "").strip() or None
        if not accepted and label is None:
            raise ValueError("Setting the label needs a label: type or choose the class the image shows.")
        with self._errors("write a review to"), Session(self._writer) as session, session.begin():
            row = session.get(InspectionRow, inspection_id)
            if row is None:
                raise ValueError(f"There is no inspection #{inspection_id} in the log at {self.url}.")
            if accepted:
                label = None if row.unknown else row.answer
            review = ReviewRow(
                inspection_id=inspection_id,
                label=label,
                accepted=bool(accepted),
                reviewer=reviewer,
                created_at=datetime.now(UTC),
            )
            session.add(review)
            session.flush()
            return _review(review)

    # -- reading --

    def get(self, inspection_id: int) -> Inspection | None:
        """One decision with its latest review, or None when there is no such id."""
        with self._errors("read"), Session(self.engine) as session:
            row = session.get(InspectionRow, inspection_id)
            return None if row is None else self._with_reviews(session, [row])[0]

    def list(
        self,
        limit: int = 50,
        offset: int = 0,
        flag: str | None = None,
        task: str | None = None,
        model: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> builtins.list[Inspection]:
        """Decisions newest first, filtered.

        Args:
            limit, offset: The page.
            flag: Only decisions with this flag (a name from :data:`FLAGS`).
            task: Only this task (a name from :data:`TASKS`).
            model: Only this model source, exactly as recorded.
            since: From this time on (inclusive); naive times are UTC.
            until: Before this time (exclusive); naive times are UTC.

        Raises:
            ValueError: an unknown flag or task.
        """
        if flag is not None and flag not in FLAGS:
            raise ValueError(f"flag {flag!r} is not one of {FLAGS}")
        if task is not None and task not in TASKS:
            raise ValueError(f"task {task!r} is not one of {TASKS}")
        query = select(InspectionRow)
        if flag is not None:
            query = query.where(_flag_filter(flag))
        if task is not None:
            query = query.where(InspectionRow.task == task)
        if model is not None:
            query = query.where(InspectionRow.model_source == model)
        if since is not None:
            query = query.where(InspectionRow.created_at >= _as_utc(since))
        if until is not None:
            query = query.where(InspectionRow.created_at < _as_utc(until))
        query = query.order_by(InspectionRow.created_at.desc(), InspectionRow.id.desc()).limit(limit).offset(offset)
        with self._errors("read"), Session(self.engine) as session:
            return self._with_reviews(session, session.scalars(query).all())

    def queue(self, limit: int = 50) -> builtins.list[Inspection]:
        """Flagged decisions nobody has reviewed yet, oldest first: the backlog is worked off in order."""
        reviewed = select(ReviewRow.id).where(ReviewRow.inspection_id == InspectionRow.id).exists()
        query = (
            select(InspectionRow)
            .where(InspectionRow.flagged, ~reviewed)
            .order_by(InspectionRow.created_at, InspectionRow.id)
            .limit(limit)
        )
        with self._errors("read"), Session(self.engine) as session:
            return self._with_reviews(session, session.scalars(query).all())

    def queue_size(self) -> int:
        reviewed = select(ReviewRow.id).where(ReviewRow.inspection_id == InspectionRow.id).exists()
        query = select(func.count()).select_from(InspectionRow).where(InspectionRow.flagged, ~reviewed)
        with self._errors("read"), Session(self.engine) as session:
            return session.scalar(query)

    def reviewed(self, task: str | None = None, model: str | None = None) -> builtins.list[Inspection]:
        """Every reviewed decision (with its latest review), oldest first; for the reviewed-images data set."""
        query = select(InspectionRow).where(
            select(ReviewRow.id).where(ReviewRow.inspection_id == InspectionRow.id).exists()
        )
        if task is not None:
            query = query.where(InspectionRow.task == task)
        if model is not None:
            query = query.where(InspectionRow.model_source == model)
        query = query.order_by(InspectionRow.id)
        with self._errors("read"), Session(self.engine) as session:
            return self._with_reviews(session, session.scalars(query).all())

    def models(self) -> builtins.list[str]:
        """The model sources that appear in the log, sorted (for the History filter)."""
        with self._errors("read"), Session(self.engine) as session:
            query = select(InspectionRow.model_source).distinct().order_by(InspectionRow.model_source)
            return builtins.list(session.scalars(query).all())

    def image_path(self, inspection_id: int) -> Path | None:
        """The stored image of a decision, or None when it was not stored (or its file is gone)."""
        inspection = self.get(inspection_id)
        if inspection is None or not inspection.image_file:
            return None
        path = self.store_dir / inspection.image_file
        return path if path.is_file() else None

    def _with_reviews(self, session: Session, rows) -> builtins.list[Inspection]:
        latest: dict[int, ReviewRow] = {}
        ids = [row.id for row in rows]
        if ids:
            query = select(ReviewRow).where(ReviewRow.inspection_id.in_(ids)).order_by(ReviewRow.id)
            for review in session.scalars(query):
                latest[review.inspection_id] = review  # ascending ids: the last one wins
        return [_inspection(row, latest.get(row.id)) for row in rows]


def _create_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url)
        _sqlite_events(engine)
        return engine
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if url.get_backend_name() == "postgresql" else {}
    # pool_pre_ping: a server restart or an idle timeout must not fail the next request.
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _sqlite_events(engine: Engine) -> None:
    """WAL and a busy timeout on every SQLite connection; writers begin with BEGIN IMMEDIATE.

    WAL lets readers and one writer work at once; busy_timeout makes a second writer wait for the
    first instead of failing with "database is locked". A writer that began as a reader and then
    writes cannot wait that way (SQLite returns SQLITE_BUSY at once when another writer committed
    in between), so write transactions take the lock when they begin. pysqlite's own implicit BEGIN
    is turned off for this, as SQLAlchemy's SQLite documentation ("Serializable isolation /
    Savepoints / Transactional DDL") describes.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql(f"BEGIN {connection.get_execution_options().get('vispect_begin', 'DEFERRED')}")


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _review(row: ReviewRow) -> Review:
    return Review(label=row.label, accepted=row.accepted, reviewer=row.reviewer, created_at=row.created_at)


def _inspection(row: InspectionRow, review: ReviewRow | None) -> Inspection:
    return Inspection(
        id=row.id,
        created_at=row.created_at,
        task=row.task,
        channel=row.channel,
        image_sha256=row.image_sha256,
        file_name=row.file_name,
        model_source=row.model_source,
        model_fingerprint=row.model_fingerprint,
        thresholds=row.thresholds or {},
        answer=row.answer,
        confidence=row.confidence,
        scores=row.scores or {},
        unknown=row.unknown,
        defective=row.defective,
        flags=tuple(flag for flag in row.flags.split(",") if flag),
        image_stored=row.image_stored,
        image_file=row.image_file,
        review=None if review is None else _review(review),
    )
