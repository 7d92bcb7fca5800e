"""`python -m bench`: every benchmark scenario in turn, at modest sizes (a few minutes on
two cores), or with `--full` at the sizes of each one's full run, which its module's
docstring gives (hours). Run one alone with `python -m bench.<name>` (`--help` for its
options). Method and figures: docs/performance.md."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from bench import (
    auth,
    email,
    export,
    fairness,
    http,
    image,
    metrics_cost,
    migrate,
    mixed_pool,
    noop,
    noop_blocks,
    open_uploads,
    redis_cost,
    scaling,
    sleep,
    submit,
    tenants,
    tracing_cost,
    upload_noop,
    watchers,
)

# Each scenario with the flags of the suite's modest run and of its full run (--full:
# the sizes its module's docstring gives; hours on two cores).
SCENARIOS: list[tuple[Callable[[Sequence[str]], None], list[str], list[str]]] = [
    (upload_noop.main, ["--items", "100000"], ["--items", "1000000"]),
    (
        noop.main,
        ["--items", "100000", "--arq-jobs", "20000"],
        ["--items", "1000000", "--arq-jobs", "20000"],
    ),
    (
        noop_blocks.main,
        ["--items", "100000", "--pairs", "2"],
        ["--items", "200000", "--pairs", "3"],
    ),
    (
        metrics_cost.main,
        ["--items", "100000", "--pairs", "2"],
        ["--items", "200000", "--pairs", "3"],
    ),
    (
        tracing_cost.main,
        ["--items", "100000", "--pairs", "2"],
        ["--items", "200000", "--pairs", "3"],
    ),
    (sleep.main, ["--items", "20000"], ["--items", "500000"]),
    (
        sleep.main,
        ["--items", "20000", "--workers", "2", "--concurrency", "100"],
        ["--items", "20000", "--workers", "2", "--concurrency", "100", "--runs", "5"],
    ),
    (
        sleep.main,
        ["--items", "20000", "--workers", "2", "--concurrency", "100", "--start-early"],
        ["--items=20000", "--workers=2", "--concurrency=100", "--start-early", "--runs=5"],
    ),
    (http.main, ["--items", "10000"], ["--items", "200000"]),
    (
        http.main,
        ["--items", "20000", "--workers", "2", "--start-early"],
        ["--items=20000", "--workers=2", "--start-early", "--runs=5"],
    ),
    (
        submit.main,
        ["--items", "100000", "--upload-items", "100000"],
        ["--items", "1000000", "--upload-items", "2000000"],
    ),
    (
        auth.main,
        ["--items", "50000", "--per-message", "100", "--rounds", "5"],
        ["--items", "200000", "--per-message", "100", "--rounds", "5"],
    ),
    (
        watchers.main,
        ["--watchers", "1000", "--processes", "2", "--items", "50000"],
        ["--watchers", "10000", "--channels", "100", "--processes", "4", "--items", "200000"],
    ),
    (
        scaling.main,
        ["--items", "50000"],
        ["--items", "1000000", "--workers", "1", "2", "4", "8"],
    ),
    (
        redis_cost.main,
        ["--items", "20000", "--memory-items", "20000"],
        ["--items", "50000"],
    ),
    (fairness.main, ["--items", "200000"], ["--items", "1000000"]),
    (
        mixed_pool.main,
        ["--items", "1000", "--runs", "5"],
        ["--items", "1000", "--chunk-size", "10", "--runs", "5"],
    ),
    (
        tenants.main,
        ["--batches", "100"],
        ["--batches", "100", "--items", "1000", "--small-items", "1000"],
    ),
    (email.main, ["--items", "10000"], ["--items", "50000"]),
    (migrate.main, ["--rows", "200000"], ["--rows", "1000000"]),
    (image.main, ["--images", "2000"], ["--images", "5000"]),
    (
        export.main,
        ["--items", "200000", "--baseline-items", "20000"],
        ["--items", "1000000"],
    ),
    (
        open_uploads.main,
        ["--upload-mib", "64", "--batch-items", "1000000"],
        ["--upload-mib", "64", "--staged-mib", "128", "--batch-items", "1000000"],
    ),
]


def main(argv: Sequence[str] | None = None) -> None:
    def listing(full: bool) -> str:
        return "\n".join(
            f"  python -m {scenario.__module__} {' '.join(large if full else modest)}"
            for scenario, modest, large in SCENARIOS
        )

    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        epilog=(
            "The scenarios, in order, with the flags the suite runs them with:\n"
            f"{listing(False)}\n\nand with --full:\n{listing(True)}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--full", action="store_true", help="each scenario at the sizes of its full run"
    )
    args = parser.parse_args(argv)
    for scenario, modest, large in SCENARIOS:
        flags = large if args.full else modest
        print(f"== {scenario.__module__} {' '.join(flags)}", flush=True)
        scenario(flags)


if __name__ == "__main__":
    main()
