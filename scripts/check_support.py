"""What the client compatibility checks (openai_check.py, tei_check.py) share: each check
prints "ok: ..." or raises CheckFailed, which the script reports as "FAIL: ..." and exit 1."""

from __future__ import annotations


class CheckFailed(Exception):
    pass


def ok(message: str) -> None:
    print(f"ok: {message}", flush=True)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)
