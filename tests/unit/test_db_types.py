"""``UTCDateTime`` remembers its last conversion: the answers are those without the memo."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from altostack.db.types import UTCDateTime


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()])
def test_utc_datetime_remembers_only_the_same_value(dialect: Dialect) -> None:
    def fresh(value: datetime | None) -> object:
        """A new processor, so nothing remembered."""
        process = UTCDateTime().bind_processor(dialect)
        return process(value) if process else value

    process = UTCDateTime().bind_processor(dialect)
    assert process is not None
    a = datetime(2026, 11, 24, 12, 0, 1, 123456, tzinfo=UTC)
    b = a + timedelta(seconds=1)
    values = [a, a, b, None, a, datetime(2026, 11, 24, 12, 0, 1, 123456, tzinfo=UTC)]
    answers = [process(v) for v in values]
    assert answers == [fresh(v) for v in values]
    assert answers[0] != answers[2] and answers[3] is None
