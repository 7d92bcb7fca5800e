"""Items, options and results: conversion to and from the batchd.v1 messages."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from batchd.client import (
    MAX_ITEM_BYTES,
    MAX_REQUEST_BYTES,
    Batch,
    BatchdError,
    BatchItem,
    BatchOptions,
    BatchProgress,
    BatchState,
    FieldViolation,
    ItemState,
    RetryPolicy,
    to_item,
)
from batchd.client._items import (
    FIRST_EARLY_MESSAGE_ITEMS,
    UploadPacker,
    aiter_upload_requests,
    iter_upload_requests,
)
from batchd.client._requests import submit_request, upload_header
from batchd.v1 import batch_pb2, batch_service_pb2


def test_mapping_item_sends_compact_json() -> None:
    item = to_item({"custom_id": "a", "params": {"url": "http://x/é", "n": [1, 2.5, None]}})
    assert item.custom_id == "a"
    assert item.WhichOneof("payload") == "params_json"
    assert item.params_json == '{"url":"http://x/é","n":[1,2.5,null]}'.encode()


def test_tuple_item_and_missing_params() -> None:
    assert to_item(("a", {"k": "v"})).params_json == b'{"k":"v"}'
    assert to_item(("b", None)).params_json == b"{}"
    assert to_item({"custom_id": "c"}).params_json == b"{}"


def test_bytes_params_pass_through_untouched() -> None:
    raw = b'{"already": "encoded"}'
    assert to_item(("a", raw)).params_json == raw


def test_generated_item_is_sent_as_is() -> None:
    item = batch_pb2.Item(custom_id="x", params_json=b"{}")
    assert to_item(item) is item


def test_params_struct_flag_sends_a_struct() -> None:
    item = to_item(("a", {"n": 1, "s": "x"}), params_struct=True)
    assert item.WhichOneof("payload") == "params"
    assert dict(item.params) == {"n": 1.0, "s": "x"}
    from_bytes = to_item(("a", b'{"k": true}'), params_struct=True)
    assert dict(from_bytes.params) == {"k": True}


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"params": {}}, "items[4].custom_id"),
        ({"custom_id": 7}, "items[4].custom_id"),
        ({"custom_id": "a", "params": [1]}, "items[4].params"),
        ({"custom_id": "a", "params": {"x": float("nan")}}, "items[4].params"),
        ({"custom_id": "a", "params": {"x": object()}}, "items[4].params"),
        ({"custom_id": "a", "param": {}}, "items[4]"),
        (("a", {}, "extra"), "items[4]"),
        (42, "items[4]"),
    ],
)
def test_bad_items_raise_invalid_argument_naming_the_field(item: object, field: str) -> None:
    with pytest.raises(BatchdError) as caught:
        to_item(item, index=4)  # type: ignore[arg-type]
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.field_violations] == [field]


def test_packer_splits_by_count() -> None:
    packer = UploadPacker(items_per_message=1000)
    messages = [m for i in range(2500) if (m := packer.add((f"i{i}", {}))) is not None]
    last = packer.flush()
    assert last is not None
    sizes = [len(m.items.items) for m in [*messages, last]]
    assert sizes == [1000, 1000, 500]
    assert packer.flush() is None


def test_packer_sends_a_smaller_first_message_when_asked() -> None:
    # What an upload that starts early asks for: a chunk's worth, then full messages.
    packer = UploadPacker(items_per_message=1000, first_message_items=FIRST_EARLY_MESSAGE_ITEMS)
    messages = [m for i in range(2500) if (m := packer.add((f"i{i}", {}))) is not None]
    last = packer.flush()
    assert last is not None
    assert [len(m.items.items) for m in [*messages, last]] == [100, 1000, 1000, 400]
    with pytest.raises(ValueError, match="first_message_items"):
        UploadPacker(first_message_items=0)


def test_packer_splits_by_bytes() -> None:
    packer = UploadPacker(items_per_message=1000, max_message_bytes=10_000)
    big = {"blob": "x" * 1000}
    messages = [m for i in range(50) if (m := packer.add((f"i{i}", big))) is not None]
    last = packer.flush()
    assert last is not None
    messages.append(last)
    assert sum(len(m.items.items) for m in messages) == 50
    assert all(m.ByteSize() <= 10_000 for m in messages)
    assert len(messages) > 5


def test_upload_requests_are_lazy() -> None:
    pulled = 0

    def items() -> Iterator[tuple[str, dict[str, int]]]:
        nonlocal pulled
        for i in range(1_000_000):
            pulled += 1
            yield f"i{i}", {"i": i}

    header = upload_header("noop", options=None, metadata=None, request_id=None, batch_id=None)
    requests = iter_upload_requests(header, items(), UploadPacker(items_per_message=3))
    first = next(requests)
    assert first.WhichOneof("part") == "header"
    assert pulled == 0
    second = next(requests)
    assert [i.custom_id for i in second.items.items] == ["i0", "i1", "i2"]
    assert pulled == 3
    next(requests)
    assert pulled == 6


async def test_async_upload_requests_are_lazy() -> None:
    pulled = 0

    async def items() -> AsyncIterator[tuple[str, dict[str, int]]]:
        nonlocal pulled
        for i in range(1_000_000):
            pulled += 1
            yield f"i{i}", {}

    header = batch_service_pb2.UploadBatchHeader(handler="noop")
    requests = aiter_upload_requests(header, items(), UploadPacker(items_per_message=2))
    assert (await anext(requests)).WhichOneof("part") == "header"
    assert len((await anext(requests)).items.items) == 2
    assert pulled == 2


def test_options_from_dataclass_mapping_and_message() -> None:
    options = BatchOptions(
        chunk_size=500,
        retry_policy=RetryPolicy(max_attempts=3, min_backoff=timedelta(seconds=1.5)),
        max_per_second=20.0,
        item_timeout=timedelta(seconds=30),
        completion_window=timedelta(hours=2),
    )
    as_mapping = {
        "chunk_size": 500,
        "retry_policy": {"max_attempts": 3, "min_backoff": 1.5},
        "max_per_second": 20.0,
        "item_timeout": 30,
        "completion_window": timedelta(hours=2),
    }
    expected = options.to_proto()
    assert expected.retry_policy.min_backoff.nanos == 500_000_000
    for given in (options, as_mapping, expected):
        request = submit_request(
            "noop",
            [],
            options=given,
            metadata={"k": "v"},
            request_id="r",
            batch_id=None,
            params_struct=False,
        )
        assert request.options == expected
        assert dict(request.metadata) == {"k": "v"}
        assert request.request_id == "r"
        assert request.batch_id == ""
    assert BatchOptions.from_proto(expected) == options


def test_unknown_option_is_invalid_argument() -> None:
    with pytest.raises(BatchdError) as caught:
        submit_request(
            "noop",
            [],
            options={"chunk_sise": 5},
            metadata=None,
            request_id=None,
            batch_id=None,
            params_struct=False,
        )
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "chunk_sise" in caught.value.message


def test_batch_from_proto() -> None:
    pb = batch_pb2.Batch(
        batch_id="b",
        handler="noop",
        state=batch_pb2.BATCH_STATE_RUNNING,
        total_items=3,
        counts=batch_pb2.ItemCounts(pending=1, running=1, succeeded=1, expired=2),
        metadata={"a": "b"},
    )
    pb.create_time.FromSeconds(1_700_000_000)
    batch = Batch.from_proto(pb)
    assert batch.state is BatchState.RUNNING
    assert not batch.state.is_terminal
    assert batch.create_time == datetime.fromtimestamp(1_700_000_000, tz=UTC)
    assert batch.start_time is None
    assert batch.counts.finished == 3
    assert batch.metadata == {"a": "b"}
    assert batch.options.retry_policy is None


def test_unknown_enum_values_read_as_unspecified() -> None:
    pb = batch_pb2.Batch(batch_id="b")
    pb.state = 99  # type: ignore[assignment]
    assert Batch.from_proto(pb).state is BatchState.UNSPECIFIED


def test_batch_item_from_proto_with_error_and_output() -> None:
    failed = batch_pb2.BatchItem(custom_id="x", index=4, state=batch_pb2.ITEM_STATE_FAILED)
    failed.error.code = grpc.StatusCode.NOT_FOUND.value[0]
    failed.error.message = "404"
    item = BatchItem.from_proto(failed)
    assert item.state is ItemState.FAILED
    assert item.error is not None
    assert (item.error.code, item.error.message) == (grpc.StatusCode.NOT_FOUND, "404")
    assert item.output is None
    assert item.next_attempt_time is None
    waiting = batch_pb2.BatchItem(custom_id="w", state=batch_pb2.ITEM_STATE_PENDING, attempts=1)
    waiting.next_attempt_time.FromSeconds(1_700_000_060)
    assert BatchItem.from_proto(waiting).next_attempt_time == datetime.fromtimestamp(
        1_700_000_060, tz=UTC
    )
    expired = BatchItem.from_proto(batch_pb2.BatchItem(state=batch_pb2.ITEM_STATE_EXPIRED))
    assert expired.state is ItemState.EXPIRED
    assert expired.state.is_terminal
    ok = batch_pb2.BatchItem(custom_id="y", state=batch_pb2.ITEM_STATE_SUCCEEDED)
    ok.output.update({"status": 200})
    assert BatchItem.from_proto(ok).output == {"status": 200}
    assert BatchItem.from_proto(ok).error is None


def test_output_keeps_its_integers_from_output_json() -> None:
    ok = batch_pb2.BatchItem(custom_id="y", state=batch_pb2.ITEM_STATE_SUCCEEDED)
    returned = {"status": 200, "rows": 5000, "big": 2**60 + 1, "x": 1.5, "whole": 2.0}
    ok.output.update(returned)
    ok.output_json = json.dumps(returned).encode()
    output = BatchItem.from_proto(ok).output
    assert output == returned
    assert output is not None
    assert [type(output[k]) for k in returned] == [int, int, int, float, float]


def test_output_from_the_struct_of_an_older_service() -> None:
    ok = batch_pb2.BatchItem(custom_id="y", state=batch_pb2.ITEM_STATE_SUCCEEDED)
    ok.output.update({"status": 200})  # no output_json: numbers are what the Struct has
    output = BatchItem.from_proto(ok).output
    assert output == {"status": 200.0}
    assert output is not None
    assert type(output["status"]) is float


def test_new_fields_claimed_and_waiting_reason() -> None:
    reason = 'no live worker serves handler "acc.upper"'
    counts = batch_pb2.ItemCounts(pending=2, claimed=3, running=1, succeeded=4)
    batch = Batch.from_proto(
        batch_pb2.Batch(batch_id="b", total_items=10, counts=counts, waiting_reason=reason)
    )
    assert (batch.counts.claimed, batch.counts.running) == (3, 1)
    assert batch.waiting_reason == reason
    progress = BatchProgress.from_proto(
        batch_pb2.BatchProgress(batch_id="b", total_items=10, counts=counts, waiting_reason=reason)
    )
    assert progress.counts.claimed == 3
    assert progress.waiting_reason == reason
    assert progress.fraction == 0.4  # claimed items are not finished
    assert Batch.from_proto(batch_pb2.Batch(batch_id="b")).waiting_reason == ""


def test_error_str_lists_violations() -> None:
    error = BatchdError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad request",
        [FieldViolation("items[0].custom_id", "too long")],
    )
    assert str(error) == "INVALID_ARGUMENT: bad request\n  items[0].custom_id: too long"
    assert json.loads(json.dumps(error.field_violations[0].__dict__))["field"] == (
        "items[0].custom_id"
    )


def test_an_item_over_the_size_limit_is_refused_naming_it() -> None:
    big = b'{"blob":"' + b"x" * MAX_ITEM_BYTES + b'"}'
    packer = UploadPacker()
    assert packer.add(("small", {"n": 1})) is None
    with pytest.raises(BatchdError) as caught:
        packer.add(("big", big))
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field_violations[0].field == "items[1]"
    description = error.field_violations[0].description
    assert "'big'" in description
    encoded = batch_pb2.Item(custom_id="big", params_json=big).ByteSize()
    assert f"is {encoded:,} bytes encoded" in description
    assert "4,194,304 bytes (4 MiB)" in description
    with pytest.raises(BatchdError) as caught:
        submit_request(
            "noop",
            [("a", {}), batch_pb2.Item(custom_id="huge", params_json=big)],
            options=None,
            metadata=None,
            request_id=None,
            batch_id=None,
            params_struct=False,
        )
    assert caught.value.field_violations[0].field == "items[1]"
    assert "'huge'" in caught.value.field_violations[0].description


def test_an_item_at_the_size_limit_is_packed() -> None:
    params = b'{"blob":"' + b"x" * (MAX_ITEM_BYTES - 22) + b'"}'
    assert batch_pb2.Item(custom_id="edge", params_json=params).ByteSize() == MAX_ITEM_BYTES
    packer = UploadPacker()
    assert packer.add(("edge", params)) is None
    message = packer.flush()
    assert message is not None
    assert message.items.items[0].params_json == params
    with pytest.raises(BatchdError):
        UploadPacker().add(("edge", params + b" "))


def test_a_submit_request_over_what_the_service_reads_is_refused() -> None:
    blob = "x" * (MAX_ITEM_BYTES // 2)
    with pytest.raises(BatchdError) as caught:
        submit_request(
            "noop",
            [(f"i{i}", {"blob": blob}) for i in range(3)],
            options=None,
            metadata=None,
            request_id=None,
            batch_id=None,
            params_struct=False,
        )
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"over the {MAX_REQUEST_BYTES:,} the service reads" in caught.value.message


@pytest.mark.parametrize("params_struct", [False, True])
def test_params_nested_too_deeply_are_invalid_argument(params_struct: bool) -> None:
    params: dict[str, object] = {}
    for _ in range(5000):
        params = {"a": params}
    with pytest.raises(BatchdError) as caught:
        to_item(("deep", params), index=3, params_struct=params_struct)
    assert caught.value.field_violations[0].field == "items[3].params"
    assert "nested deeper than 32 levels" in caught.value.field_violations[0].description


def test_text_that_is_not_utf_8_is_invalid_argument() -> None:
    with pytest.raises(BatchdError) as caught:
        UploadPacker().add(("a", {"s": "\ud800"}))
    assert caught.value.field_violations[0].field == "items[0].params"
    with pytest.raises(BatchdError) as caught:
        UploadPacker().add(("\ud800", {}))
    assert caught.value.field_violations[0].field == "items[0].custom_id"
