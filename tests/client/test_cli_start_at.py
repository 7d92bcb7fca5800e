"""`batchd submit --start-at`: ISO 8601 times and delays from now."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta, timezone

import pytest

from batchd.cli._parser import start_at

NOW = datetime(2026, 12, 5, 6, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "delay"),
    [("+90s", 90), ("+10m", 600), ("+2h", 7200), ("+1d", 86400), ("+0.5m", 30)],
)
def test_a_delay_counts_from_now(text: str, delay: float) -> None:
    assert start_at(text, NOW) == NOW + timedelta(seconds=delay)


def test_an_iso_time_keeps_its_offset_and_one_without_is_utc() -> None:
    plus_one = timezone(timedelta(hours=1))
    assert start_at("2026-12-24T18:00:00+01:00") == datetime(2026, 12, 24, 18, tzinfo=plus_one)
    assert start_at("2026-12-24T18:00:00Z") == datetime(2026, 12, 24, 18, tzinfo=UTC)
    assert start_at("2026-12-24T18:00:00") == datetime(2026, 12, 24, 18, tzinfo=UTC)


@pytest.mark.parametrize("text", ["+10", "+10w", "+m", "tomorrow", "2026-13-01"])
def test_anything_else_is_refused_with_the_forms_it_takes(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"\+10m"):
        start_at(text, NOW)
