"""greet.send, tested with batchd.testing: unit tests run the handler in this
process; the end-to-end test runs it in a real worker behind a real batchd server."""

from __future__ import annotations

from typing import Any

import greeter.handlers
import grpc
import pytest
from conftest import Webhooks
from greeter.handlers import close_pool, greet_send, open_pool

from batchd.client import BatchdError, ItemState
from batchd.testing import (
    InvalidRequest,
    call_handler,
    check_params,
    open_handler,
    params_violations,
    serve_handlers,
)
from batchd.worker import Code, HandlerError, PermanentError, RetryableError, SlowDown

# -- unit: one item through the handler, hooks included -----------------------------------


async def test_greets_in_the_recipients_language(webhooks: Webhooks) -> None:
    params = {"name": "Ada", "webhook": f"{webhooks.url}/hooks/ada", "language": "fr"}
    output = await call_handler(greet_send, params, custom_id="ada-fr")
    assert output == {"greeting": "Bonjour, Ada !", "status": 200, "duplicate": False}
    # The idempotency key is "<batch_id>/<custom_id>"; call_handler's batch is "test-batch".
    assert webhooks.received[-1] == ("test-batch/ada-fr", {"greeting": "Bonjour, Ada !"})


async def test_a_second_delivery_of_an_item_is_a_duplicate(webhooks: Webhooks) -> None:
    params = {"name": "Grace", "webhook": f"{webhooks.url}/hooks/grace"}
    async with open_handler(greet_send) as greet:  # one startup for both calls
        first = await greet.call(params, custom_id="grace")
        again = await greet.call(params, custom_id="grace", attempt=2)
    assert (first["duplicate"], again["duplicate"]) == (False, True)


@pytest.mark.parametrize(
    ("kind", "error", "code"),
    [
        ("gone", PermanentError, Code.NOT_FOUND),
        ("private", PermanentError, Code.PERMISSION_DENIED),
        ("busy", SlowDown, Code.RESOURCE_EXHAUSTED),
        ("broken", RetryableError, Code.UNAVAILABLE),
    ],
)
async def test_each_answer_has_its_error_class(
    webhooks: Webhooks, kind: str, error: type[HandlerError], code: Code
) -> None:
    params = {"name": "Alan", "webhook": f"{webhooks.url}/{kind}/alan"}
    with pytest.raises(error) as caught:
        await call_handler(greet_send, params, custom_id=f"alan-{kind}")
    assert caught.value.code == code


async def test_an_unreachable_webhook_is_retried(unused_tcp_port: int) -> None:
    params = {"name": "Edsger", "webhook": f"http://127.0.0.1:{unused_tcp_port}/"}
    with pytest.raises(RetryableError, match="cannot reach"):
        await call_handler(greet_send, params)


# -- params: the schema the server checks at submit time ----------------------------------


def test_the_schema_takes_a_name_a_webhook_and_a_language() -> None:
    check_params(greet_send, {"name": "Ada", "webhook": "https://hooks.example/ada"})
    with pytest.raises(InvalidRequest) as caught:
        check_params(greet_send, {"name": "", "webhook": "https://hooks.example/ada"})
    assert [v.field for v in caught.value.violations] == ["items[0].params.name"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"name": "Ada"}, "items[0].params"),  # webhook missing
        ({"name": "Ada", "webhook": "ftp://hooks.example"}, "items[0].params.webhook"),
        ({"name": "Ada", "webhook": "http://x", "language": "xx"}, "items[0].params.language"),
    ],
)
def test_the_schema_refuses(params: dict[str, Any], field: str) -> None:
    assert [v.field for v in params_violations(greet_send, params)] == [field]


async def test_the_hooks_open_and_close_the_pool() -> None:
    assert greet_send.startup is open_pool
    assert greet_send.shutdown is close_pool
    async with open_handler(greet_send, concurrency=3):
        assert greeter.handlers._session is not None
        assert greeter.handlers._session.connector is not None
        assert greeter.handlers._session.connector.limit == 3  # sized to the worker
    assert greeter.handlers._session is None


# -- end to end: a real server, worker and Redis --------------------------------------------


async def test_a_batch_of_greetings(webhooks: Webhooks) -> None:
    items = [
        ("ada", {"name": "Ada", "webhook": f"{webhooks.url}/hooks/ada", "language": "de"}),
        ("busy", {"name": "Barbara", "webhook": f"{webhooks.url}/busy/barbara"}),
        ("gone", {"name": "Charles", "webhook": f"{webhooks.url}/gone/charles"}),
    ]
    async with serve_handlers(greet_send) as service:
        (info,) = [h for h in await service.client.handlers() if h.name == "greet.send"]
        assert info.default_options.retry_policy is not None
        assert info.default_options.retry_policy.max_attempts == 4
        # The handler's 1 s backoff is for real webhooks; a test has no time to lose.
        run = await service.run_batch(
            "greet.send", items, options={"retry_policy": {"min_backoff": 0.01}}
        )
        with pytest.raises(BatchdError) as refused:  # the schema, checked at submit time
            await service.run_batch("greet.send", [("x", {"name": "Ada"})])
    assert run.outputs["ada"]["greeting"] == "Hallo, Ada!"
    assert (run.items["busy"].state, run.items["busy"].attempts) == (ItemState.SUCCEEDED, 2)
    gone = run.failed["gone"]
    assert gone.error is not None
    assert (gone.error.code, gone.attempts) == (grpc.StatusCode.NOT_FOUND, 1)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in refused.value.field_violations] == ["items[0].params"]
