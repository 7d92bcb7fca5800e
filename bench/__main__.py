"""`python -m bench`: every benchmark scenario in turn, at modest sizes (a few minutes on
two cores). Each module's docstring gives the sizes of a full run; run one alone with
`python -m bench.<name>` (`--help` for its options). Method and figures:
docs/performance.md."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

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

SCENARIOS = [
    (upload_noop.main, ["--items", "100000"]),
    (noop.main, ["--items", "100000", "--arq-jobs", "20000"]),
    (noop_blocks.main, ["--items", "100000", "--pairs", "2"]),
    (metrics_cost.main, ["--items", "100000", "--pairs", "2"]),
    (tracing_cost.main, ["--items", "100000", "--pairs", "2"]),
    (sleep.main, ["--items", "20000"]),
    (sleep.main, ["--items", "20000", "--workers", "2", "--concurrency", "100"]),
    (http.main, ["--items", "10000"]),
    (submit.main, ["--items", "100000", "--upload-items", "100000"]),
    (auth.main, ["--items", "50000", "--per-message", "100", "--rounds", "5"]),
    (watchers.main, ["--watchers", "1000", "--processes", "2", "--items", "50000"]),
    (scaling.main, ["--items", "50000"]),
    (redis_cost.main, ["--items", "20000", "--memory-items", "20000"]),
    (fairness.main, ["--items", "200000"]),
    (mixed_pool.main, ["--items", "1000", "--runs", "5"]),
    (tenants.main, ["--batches", "100"]),
    (email.main, ["--items", "10000"]),
    (migrate.main, ["--rows", "200000"]),
    (image.main, ["--images", "2000"]),
    (export.main, ["--items", "200000", "--baseline-items", "20000"]),
    (open_uploads.main, ["--upload-mib", "64", "--batch-items", "1000000"]),
]


def main(argv: Sequence[str] | None = None) -> None:
    listing = "\n".join(
        f"  python -m {scenario.__module__} {' '.join(flags)}" for scenario, flags in SCENARIOS
    )
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        epilog=f"The scenarios, in order, with the flags the suite runs them with:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    for scenario, flags in SCENARIOS:
        print(f"== {scenario.__module__} {' '.join(flags)}", flush=True)
        scenario(flags)


if __name__ == "__main__":
    main()
