"""The one retry policy of the warehouse drivers: transient errors are tried again, up
to the attempts allowed, and any other error (or the last transient one) reaches the
caller as it was."""

from __future__ import annotations

import pytest

from loader.warehouses.base import retried


def _failing(times: int, error: Exception):
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "done"

    return fn, calls


def _connection_lost(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError)


def test_a_transient_error_is_tried_again_until_it_passes() -> None:
    fn, calls = _failing(2, ConnectionError("reset"))
    assert retried(fn, 4, _connection_lost, first_wait=0.001) == "done"
    assert len(calls) == 3


def test_the_last_transient_error_is_raised_once_attempts_run_out() -> None:
    error = ConnectionError("reset")
    fn, calls = _failing(5, error)
    with pytest.raises(ConnectionError) as raised:
        retried(fn, 3, _connection_lost, first_wait=0.001)
    assert raised.value is error and len(calls) == 3


def test_an_error_that_is_not_transient_is_never_retried() -> None:
    fn, calls = _failing(1, PermissionError("denied"))
    with pytest.raises(PermissionError):
        retried(fn, 5, _connection_lost, first_wait=0.001)
    assert len(calls) == 1
