"""greet.bulk, tested with batchd.testing against the local bulk endpoint: one item
through the handler, and a batch in blocks through a real server and worker."""

from __future__ import annotations

import grpc
from conftest import Webhooks
from greeter.bulk import greet_bulk

from batchd.client import ItemState
from batchd.testing import call_handler, serve_handlers


async def test_one_item_is_a_block_of_one(webhooks: Webhooks) -> None:
    params = {"name": "Ada", "endpoint": f"{webhooks.url}/greetings", "language": "fr"}
    output = await call_handler(greet_bulk, params, custom_id="bulk-ada")
    assert output == {"greeting": "Bonjour, Ada !", "status": 201, "duplicate": False}


async def test_a_batch_goes_in_blocks_and_each_item_has_its_outcome(webhooks: Webhooks) -> None:
    assert webhooks.bulk is not None
    endpoint = f"{webhooks.url}/greetings"
    items = [(f"p{i}", {"name": f"Person {i}", "endpoint": endpoint}) for i in range(45)]
    items += [
        ("busy", {"name": "Busy Barbara", "endpoint": endpoint}),
        ("gone", {"name": "Gone Charles", "endpoint": endpoint}),
        ("down", {"name": "Dora", "endpoint": f"{webhooks.url}/down"}),
    ]
    before = len(webhooks.bulk.requests)
    options = {"block_size": 20, "retry_policy": {"min_backoff": 0.01, "max_attempts": 2}}
    async with serve_handlers(greet_bulk) as service:
        (info,) = [h for h in await service.client.handlers() if h.name == "greet.bulk"]
        assert info.default_options.block_size == 100
        run = await service.run_batch("greet.bulk", items, options=options)
    assert run.outputs["p7"] == {"greeting": "Hello, Person 7!", "status": 201, "duplicate": False}
    # 503 for its element alone: that item, and only it, ran again.
    assert (run.items["busy"].state, run.items["busy"].attempts) == (ItemState.SUCCEEDED, 2)
    assert all(run.items[f"p{i}"].attempts == 1 for i in range(45))
    gone = run.failed["gone"]
    assert gone.error is not None
    assert gone.error.code == grpc.StatusCode.NOT_FOUND
    down = run.failed["down"]  # its whole request failed (500): retried, then failed
    assert down.error is not None
    assert down.attempts == 2
    sent = webhooks.bulk.requests[before:]
    assert sum(sent) == 47 + 1  # every element once, and busy twice
    assert 1 < max(sent) <= 20
