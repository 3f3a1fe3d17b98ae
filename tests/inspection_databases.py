"""The databases the inspection-log tests run against: an SQLite file, and PostgreSQL when one is given.

``VISPECT_TEST_POSTGRES_URL`` names a server database (``.ci/postgres.sh start`` makes one and prints
its URL); without it the PostgreSQL cases are skipped with a message, unless ``REQUIRE_POSTGRES=1``
(CI), which makes them fail. Each PostgreSQL test gets a schema of its own, dropped afterwards, so
tests never see each other's rows. Plain context managers; ``tests/conftest.py`` declares the
``log_url`` and ``open_log`` fixtures over them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

POSTGRES_ENV = "VISPECT_TEST_POSTGRES_URL"
DATABASES = ["sqlite", "postgresql"]


def _postgres_base_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if url:
        return url
    message = (
        f"PostgreSQL case skipped: set {POSTGRES_ENV} to a server database URL (.ci/postgres.sh start prints one)."
    )
    if os.environ.get("REQUIRE_POSTGRES") == "1":
        pytest.fail(f"REQUIRE_POSTGRES=1 but {POSTGRES_ENV} is not set.")
    pytest.skip(message)


@contextmanager
def database_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """A database URL with nothing in it yet: an SQLite file (``kind`` "sqlite"), or a fresh PostgreSQL schema.

    Test modules wrap it in a fixture parametrized over :data:`DATABASES`.
    """
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'inspections.db'}"
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(_postgres_base_url())
    schema = f"vispect_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    # libpq's options parameter: every connection of this URL works in the new schema.
    url = base.update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def log_opener(url: str, store_dir: Path) -> Iterator[Callable]:
    """``open_log(**options)``: ``InspectionLog``s on ``url`` (images in ``store_dir``), closed on exit."""
    from common.inspection_log import InspectionLog

    opened = []

    def open_log(**options):
        options.setdefault("store_dir", store_dir)
        log = InspectionLog.open(url, **options)
        opened.append(log)
        return log

    try:
        yield open_log
    finally:
        for log in opened:
            log.close()
