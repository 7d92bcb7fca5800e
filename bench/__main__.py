"""`python -m bench`: every benchmark scenario, in turn (pass --items to scale them)."""

from __future__ import annotations

from bench import fairness, upload_noop

if __name__ == "__main__":
    upload_noop.main()
    fairness.main()
