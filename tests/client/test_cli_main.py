"""The `batchd` command against a scripted real grpc.aio server.

`main()` uses the blocking client, so each run goes through asyncio.to_thread and
the server keeps serving on the test's event loop.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import grpc
import pytest
from client.client_fakes import Abort, FakeBatchService, FakeServer, make_batch, progress
from google.rpc import error_details_pb2
from rich.console import Console

from batchd.cli._progress import follow, render
from batchd.cli.main import main
from batchd.client import BatchProgress, BatchState, Client
from batchd.v1 import batch_pb2, batch_service_pb2

RUNNING = BatchState.RUNNING
COMPLETED = BatchState.COMPLETED
CANCELLED = BatchState.CANCELLED


async def run(server: FakeServer, *args: str) -> int:
    return await asyncio.to_thread(main, ["--target", server.target, *args])


def jsonl(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "items.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


async def test_submit_streams_a_file(
    service: FakeBatchService,
    server: FakeServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = [json.dumps({"custom_id": f"i{i}", "params": {"i": i}}) for i in range(2500)]
    lines[2] = json.dumps({"params": {"i": 2}})
    path = jsonl(tmp_path, lines)
    status = await run(
        server,
        "submit",
        "noop",
        path,
        "--chunk-size=100",
        "--max-attempts=3",
        "--max-per-second=50",
        "--priority=2",
        "--completion-window=3600",
        "--metadata=team=data",
        "--metadata=run=7",
        "--request-id=r1",
        "--batch-id=mine",
    )
    assert status == 0
    assert capsys.readouterr().out == "mine\n"
    upload = service.uploads[-1]
    header = upload.header
    assert header.handler == "noop"
    assert header.options.chunk_size == 100
    assert header.options.retry_policy.max_attempts == 3
    assert header.options.max_per_second == 50
    assert header.options.priority == 2
    assert header.options.completion_window.seconds == 3600
    assert dict(header.metadata) == {"team": "data", "run": "7"}
    assert (header.request_id, header.batch_id) == ("r1", "mine")
    assert [len(m.items.items) for m in upload.item_messages] == [1000, 1000, 500]
    assert upload.messages[-1].end.item_count == 2500
    assert upload.items[2].custom_id == "line-3"
    assert upload.items[4].params_json == b'{"i":4}'


async def test_submit_start_early_announces_the_files_items(
    service: FakeBatchService, server: FakeServer, tmp_path: Path
) -> None:
    lines = [json.dumps({"custom_id": f"i{i}"}) for i in range(1500)]
    path = jsonl(tmp_path, [*lines[:700], "", *lines[700:]])  # a blank line is no item
    assert await run(server, "submit", "noop", path, "--start-early") == 0
    upload = service.uploads[-1]
    assert (upload.header.start_early, upload.header.item_count) == (True, 1500)
    assert len(upload.items) == 1500


async def test_submit_reads_stdin(
    service: FakeBatchService,
    server: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(b'{"custom_id": "a"}\n{"custom_id": "b"}\n'))
    monkeypatch.setattr("sys.stdin", stdin)
    assert await run(server, "submit", "noop", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["batch"]["total_items"] == 2
    assert out["replayed"] is False
    assert [i.custom_id for i in service.uploads[-1].items] == ["a", "b"]


async def test_submit_bad_line_is_an_error_and_nothing_is_kept(
    service: FakeBatchService,
    server: FakeServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = jsonl(tmp_path, ['{"custom_id": "a"}'] * 1500 + ['{"custom_id": "b", "params": 3}'])
    assert await run(server, "submit", "noop", path) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "error: INVALID_ARGUMENT: invalid line 1501\n  line 1501: params must be a JSON object\n"
    )
    assert service.uploads[-1].outcome == "rejected"


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (
            '{"custom_id": "big", "params": {"blob": "' + "x" * (5 << 20) + '"}}',
            "  line 4: item 'big' is 5,242,901 bytes encoded, over the limit of 4,194,304 "
            "bytes (4 MiB) per item\n",
        ),
        (
            '{"custom_id": "deep", "params": {"a": ' + "[" * 1000 + "]" * 1000 + "}}",
            "  line 4: nested too deeply to read\n",
        ),
        ('{"custom_id": "s", "params": {"a": "\\ud800"}}', "  line 4 params: not JSON: "),
    ],
    ids=["over the size limit", "nested 1000 deep", "a lone surrogate"],
)
async def test_submit_bad_input_names_the_line_without_a_traceback(
    service: FakeBatchService,
    server: FakeServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    line: str,
    says: str,
) -> None:
    # Line 2 is blank: lines and items are counted apart.
    path = jsonl(tmp_path, ['{"custom_id": "a"}', "", '{"custom_id": "b"}', line])
    assert await run(server, "submit", "noop", path) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: INVALID_ARGUMENT: invalid line 4")
    assert says in captured.err
    assert "Traceback" not in captured.err
    assert all(upload.outcome != "completed" for upload in service.uploads)


async def test_submit_missing_file(server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(server, "submit", "noop", "/nonexistent/items.jsonl") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read /nonexistent/items.jsonl: ")
    assert "Traceback" not in err


async def test_server_error_prints_code_message_and_violations(
    service: FakeBatchService, server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field="items[0].params.url", description="is required"
            )
        ]
    )
    service.upload_reject = Abort(grpc.StatusCode.INVALID_ARGUMENT, "1 invalid item", [bad])
    stdin = io.TextIOWrapper(io.BytesIO(b'{"custom_id": "a"}\n'))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", stdin)
        assert await run(server, "submit", "http.request", "-") == 2
    assert capsys.readouterr().err == (
        "error: INVALID_ARGUMENT: 1 invalid item\n  items[0].params.url: is required\n"
    )


async def test_get_not_found(
    service: FakeBatchService, server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    service.errors["GetBatch"] = [Abort(grpc.StatusCode.NOT_FOUND, 'batch "x" not found')]
    assert await run(server, "get", "x") == 2
    assert capsys.readouterr().err == 'error: NOT_FOUND: batch "x" not found\n'


async def test_get_prints_the_batch(server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(server, "get", "b7") == 0
    out = capsys.readouterr().out
    assert "batch_id    b7\n" in out
    assert "state       QUEUED\n" in out
    assert "metadata    team=data\n" in out
    assert await run(server, "get", "b7", "--json") == 0
    batch = json.loads(capsys.readouterr().out)
    assert batch["batch_id"] == "b7"
    assert batch["state"] == "QUEUED"
    assert batch["create_time"] == "2023-11-14T22:13:20Z"
    assert batch["options"]["chunk_size"] == 100


async def test_list_filters_and_streams_json_lines(
    service: FakeBatchService, server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    service.batches = [make_batch(f"b{i}", state=batch_pb2.BATCH_STATE_RUNNING) for i in range(5)]
    assert await run(server, "list", "--state", "running", "--state=QUEUED", "--json") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["batch_id"] for line in lines] == [f"b{i}" for i in range(5)]
    request = service.requests[-1]
    assert isinstance(request, batch_service_pb2.ListBatchesRequest)
    assert list(request.states) == [batch_pb2.BATCH_STATE_RUNNING, batch_pb2.BATCH_STATE_QUEUED]
    assert await run(server, "list", "--limit", "2") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["BATCH_ID", "STATE", "DONE/TOTAL", "HANDLER", "CREATED"]
    assert [row.split()[:3] for row in table[1:]] == [
        ["b0", "RUNNING", "0/3"],
        ["b1", "RUNNING", "0/3"],
    ]


async def test_items_shows_failed_items_with_their_error(
    service: FakeBatchService, server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    failed = batch_pb2.BatchItem(
        custom_id="h7", index=7, state=batch_pb2.ITEM_STATE_FAILED, attempts=3
    )
    failed.error.code = grpc.StatusCode.NOT_FOUND.value[0]
    failed.error.message = "HTTP 404"
    ok = batch_pb2.BatchItem(custom_id="h8", index=8, state=batch_pb2.ITEM_STATE_SUCCEEDED)
    service.items = [failed, ok]
    assert await run(server, "items", "b1", "--state", "failed") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["7", "h7", "FAILED", "3", "NOT_FOUND:", "HTTP", "404"]
    assert len(out) == 2
    assert await run(server, "items", "b1", "--json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["error"] == {"code": "NOT_FOUND", "message": "HTTP 404"}
    assert rows[1]["state"] == "SUCCEEDED"


async def test_cancel_and_handlers(
    service: FakeBatchService, server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run(server, "cancel", "b3") == 0
    assert capsys.readouterr().out == "b3 CANCELLING\n"
    service.handlers = [
        batch_pb2.HandlerInfo(name="noop", description="Does nothing.\nMore.", live_workers=2)
    ]
    assert await run(server, "handlers") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["noop", "2", "-", "Does", "nothing."]
    assert await run(server, "handlers", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "noop"


async def test_retry_then_watch_and_delete(
    service: FakeBatchService, server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    service.watch_scripts = [[progress(COMPLETED, succeeded=10)]]
    assert await run(server, "retry", "b1", "--item", "a", "--item=b", "--watch") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "b1 RUNNING: 2 items requeued"
    assert " b1 COMPLETED 10/10 " in lines[1]
    request = next(
        r for r in service.requests if isinstance(r, batch_service_pb2.RetryBatchItemsRequest)
    )
    assert list(request.custom_ids) == ["a", "b"]
    assert await run(server, "delete", "b1") == 0
    assert capsys.readouterr().out == "b1 deleted\n"


async def test_watch_prints_a_line_per_snapshot_and_exits_0_on_success(
    service: FakeBatchService, server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    service.watch_scripts = [
        [progress(RUNNING, pending=5, succeeded=5), Abort(grpc.StatusCode.UNAVAILABLE, "bye")],
        [progress(COMPLETED, succeeded=10)],
    ]
    assert await run(server, "watch", "b1", "--interval", "0.1") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert " b1 RUNNING 5/10 (50.0%) succeeded=5 failed=0 " in lines[0]
    assert "eta=0:07" in lines[0]
    assert " b1 COMPLETED 10/10 (100.0%) " in lines[1]
    assert service.watch_requests[0].min_interval.ToTimedelta().total_seconds() == 0.1


@pytest.mark.parametrize(
    ("final", "status"),
    [
        (progress(COMPLETED, succeeded=8, failed=2), 1),
        (progress(CANCELLED, succeeded=3, cancelled=7), 1),
        (progress(COMPLETED, succeeded=9, expired=1), 1),
        (progress(COMPLETED, succeeded=10), 0),
    ],
)
async def test_watch_exit_status(
    service: FakeBatchService,
    server: FakeServer,
    capsys: pytest.CaptureFixture[str],
    final: batch_service_pb2.WatchProgressResponse,
    status: int,
) -> None:
    service.watch_scripts = [[final]]
    assert await run(server, "watch", "b1", "--json") == status
    snapshot = json.loads(capsys.readouterr().out)
    assert snapshot["batch_id"] == "b1"
    assert snapshot["eta"] == 7.0


async def test_watch_hints_at_failed_items(
    service: FakeBatchService, server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    service.watch_scripts = [[progress(COMPLETED, succeeded=7, failed=2, expired=1)]]
    assert await run(server, "watch", "b1") == 1
    captured = capsys.readouterr()
    assert "failed=2 running=0 claimed=0 pending=0 cancelled=0 expired=1 " in captured.out
    assert captured.err == (
        "2 items failed: batchd items b1 --state failed\n"
        "1 items expired: batchd items b1 --state expired\n"
        "to run them again: batchd retry b1\n"
    )


async def test_submit_then_watch(
    service: FakeBatchService,
    server: FakeServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    service.watch_scripts = [[progress(COMPLETED, succeeded=1, total=1, batch_id="w1")]]
    path = jsonl(tmp_path, ['{"custom_id": "a"}'])
    assert await run(server, "submit", "noop", path, "--batch-id", "w1", "--watch") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "w1"
    assert " w1 COMPLETED 1/1 " in lines[1]
    assert service.watch_requests[0].batch_id == "w1"


async def test_target_from_the_environment_and_after_the_verb(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BATCHD_TARGET", server.target)
    assert await asyncio.to_thread(main, ["cancel", "e1"]) == 0
    assert capsys.readouterr().out == "e1 CANCELLING\n"
    monkeypatch.setenv("BATCHD_TARGET", "127.0.0.1:1")
    assert await asyncio.to_thread(main, ["cancel", "e2", "--target", server.target]) == 0
    assert capsys.readouterr().out == "e2 CANCELLING\n"


def test_bad_state_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["list", "--state", "sleeping"])
    assert caught.value.code == 2
    assert "unknown state 'sleeping'" in capsys.readouterr().err


@pytest.mark.slow
def test_unreachable_server_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", "127.0.0.1:1", "--timeout", "3", "get", "b1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: UNAVAILABLE: ")
    assert "Traceback" not in err


def snapshot(state: BatchState, **counts: int) -> BatchProgress:
    response = progress(state, **counts)  # type: ignore[arg-type]
    return BatchProgress.from_proto(response.progress)


def test_live_display_shows_counts_rate_and_eta() -> None:
    console = Console(record=True, width=100, force_terminal=True, file=io.StringIO())
    console.print(render("b1", snapshot(RUNNING, pending=4, running=2, succeeded=3, failed=1)))
    text = console.export_text()
    assert "b1  RUNNING" in text
    assert "40.0%  4/10" in text
    assert "succeeded 3  failed 1  running 2  claimed 0  pending 4  cancelled 0" in text
    assert "2.5 items/s  ETA 0:07" in text


async def test_follow_on_a_terminal_ends_with_the_final_state(
    service: FakeBatchService, server: FakeServer
) -> None:
    service.watch_scripts = [
        [progress(RUNNING, pending=5, succeeded=5), progress(COMPLETED, succeeded=10)]
    ]
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    err = io.StringIO()

    def watch() -> int:
        with Client(server.target) as client:
            return follow(
                client, "b1", min_interval=0.1, console=console, out=screen, err=err, as_json=False
            )

    assert await asyncio.to_thread(watch) == 0
    assert "COMPLETED" in screen.getvalue()
    assert err.getvalue() == ""


async def test_pause_resume_and_update(
    service: FakeBatchService, server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run(server, "pause", "b4") == 0
    assert capsys.readouterr().out == "b4 PAUSED\n"
    assert await run(server, "resume", "b4") == 0
    assert capsys.readouterr().out == "b4 RUNNING\n"
    assert await run(server, "update", "b4", "--priority", "5", "--max-per-second", "2.5") == 0
    assert capsys.readouterr().out.startswith("b4 RUNNING: priority 5, max_per_second 2.5,")
    request = service.requests[-1]
    assert isinstance(request, batch_service_pb2.UpdateBatchRequest)
    assert sorted(request.update_mask.paths) == ["max_per_second", "priority"]
    assert await run(server, "update", "b4") == 2  # nothing to change
    assert "--priority" in capsys.readouterr().err


def _export_message(
    first: int, count: int, total: int
) -> batch_service_pb2.ExportBatchResultsResponse:
    lines = "".join(
        json.dumps({"custom_id": f"i{n}", "index": n, "state": "SUCCEEDED"}) + "\n"
        for n in range(first, first + count)
    )
    return batch_service_pb2.ExportBatchResultsResponse(
        lines=lines.encode(),
        line_count=count,
        cursor=f"c{first + count - 1}",
        position=first + count,
        total_items=total,
    )


async def test_results_writes_the_lines_as_they_come(
    service: FakeBatchService, server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    service.export_script = [_export_message(0, 3, 5), _export_message(3, 2, 5)]
    assert await run(server, "results", "b1", "--order", "id", "--after", "c7") == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["custom_id"] for line in out.splitlines()] == [
        f"i{n}" for n in range(5)
    ]
    assert err == ""  # no terminal: no bar, no summary
    request = service.requests[-1]
    assert isinstance(request, batch_service_pb2.ExportBatchResultsRequest)
    assert (request.batch_id, request.order, request.after) == (
        "b1",
        batch_service_pb2.EXPORT_ORDER_CUSTOM_ID,
        "c7",
    )


async def test_results_broken_off_says_how_to_resume(
    service: FakeBatchService, server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    service.export_script = [
        _export_message(0, 3, 9),
        Abort(grpc.StatusCode.UNAVAILABLE, "the server went away"),
    ]
    assert await run(server, "results", "b1", "--order", "id") == 2
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 3  # whole lines only
    assert err.splitlines() == [
        "3 lines written before the export broke off",
        "resume with: batchd results b1 --order id --after c2 >> FILE",
        "error: UNAVAILABLE: the server went away",
    ]


def batch_event(cursor: str, kind: int) -> batch_service_pb2.WatchBatchesResponse:
    return batch_service_pb2.WatchBatchesResponse(
        event=batch_service_pb2.BatchEvent(
            cursor=cursor,
            type=batch_service_pb2.BatchEventType.ValueType(kind),
            batch_id="b1",
            state=batch_pb2.BATCH_STATE_QUEUED,
            handler="noop",
            metadata={"team": "billing"},
            total_items=3,
            counts=batch_pb2.ItemCounts(pending=3),
        ),
        cursor=cursor,
    )


async def test_events_prints_a_json_line_per_event(
    service: FakeBatchService, server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    service.events_scripts = [
        [
            batch_service_pb2.WatchBatchesResponse(heartbeat=True, cursor="1-0"),
            batch_event("2-0", batch_service_pb2.BATCH_EVENT_TYPE_CREATED),
            batch_event("3-0", batch_service_pb2.BATCH_EVENT_TYPE_STARTED),
            batch_event("4-0", batch_service_pb2.BATCH_EVENT_TYPE_FINISHED),
        ]
    ]
    args = ["events", "--label", "team=billing", "--state", "queued", "--type", "created"]
    status = await run(
        server, *args, "--type", "cancel-requested", "--cursor", "1-0", "--limit", "2"
    )
    assert status == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["cursor"], line["type"]) for line in lines] == [
        ("2-0", "CREATED"),
        ("3-0", "STARTED"),
    ]
    assert lines[0]["metadata"] == {"team": "billing"}
    assert lines[0]["counts"]["pending"] == 3
    assert "heartbeat" not in lines[0]
    (request,) = [
        r for r in service.requests if isinstance(r, batch_service_pb2.WatchBatchesRequest)
    ]
    assert (dict(request.labels), request.cursor, request.from_oldest) == (
        {"team": "billing"},
        "1-0",
        False,
    )
    assert list(request.states) == [batch_pb2.BATCH_STATE_QUEUED]
    assert list(request.types) == [
        batch_service_pb2.BATCH_EVENT_TYPE_CREATED,
        batch_service_pb2.BATCH_EVENT_TYPE_CANCEL_REQUESTED,
    ]


async def test_events_refuses_a_cursor_with_from_oldest(
    server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        await run(server, "events", "--cursor", "1-0", "--from-oldest")
    assert "not allowed with argument" in capsys.readouterr().err
