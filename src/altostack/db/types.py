"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes; SQLite stores them naive, so we re-attach UTC on read."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def bind_processor(self, dialect: Dialect) -> Any:
        """The usual processing, remembering its last answer: the rows of a batch share
        one timestamp (a VM create's ``now``), and turning it into what the driver takes
        costs more than the rest of a row's values (on SQLite, a formatted string each
        time). A datetime is immutable, so the same object always gives the same answer."""
        process = super().bind_processor(dialect)
        if process is None:
            return None
        last: tuple[object, Any] = (object(), None)

        def remembered(value: Any) -> Any:
            nonlocal last
            seen, answer = last
            if value is seen:
                return answer
            answer = process(value)
            last = (value, answer)
            return answer

        return remembered

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType: Any = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)
