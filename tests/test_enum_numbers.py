"""Enums that cross the proto edge by number: the core's and the Python client's say
what the proto says, name for name (the converters pass the numbers through, so a
mismatch would send the wrong event type or state without an error)."""

from __future__ import annotations

import enum
from typing import Any

import pytest

from batchd import client
from batchd.core import domain, events
from batchd.v1 import batch_pb2, batch_service_pb2


def proto_numbers(proto_enum: Any, prefix: str) -> dict[str, int]:
    """The proto enum's members but *_UNSPECIFIED, by name without `prefix`."""
    return {name.removeprefix(prefix): number for name, number in proto_enum.items() if number != 0}


def numbers(python_enum: type[enum.IntEnum]) -> dict[str, int]:
    return {member.name: int(member) for member in python_enum if member != 0}


@pytest.mark.parametrize(
    ("python_enum", "proto_enum", "prefix"),
    [
        (events.BatchEventType, batch_service_pb2.BatchEventType, "BATCH_EVENT_TYPE_"),
        (client.BatchEventType, batch_service_pb2.BatchEventType, "BATCH_EVENT_TYPE_"),
        (domain.BatchState, batch_pb2.BatchState, "BATCH_STATE_"),
        (client.BatchState, batch_pb2.BatchState, "BATCH_STATE_"),
        (domain.ItemState, batch_pb2.ItemState, "ITEM_STATE_"),
        (client.ItemState, batch_pb2.ItemState, "ITEM_STATE_"),
    ],
    ids=[
        "core-event-type",
        "client-event-type",
        "core-batch-state",
        "client-batch-state",
        "core-item-state",
        "client-item-state",
    ],
)
def test_the_numbers_are_the_protos(
    python_enum: type[enum.IntEnum], proto_enum: Any, prefix: str
) -> None:
    assert numbers(python_enum) == proto_numbers(proto_enum, prefix)
