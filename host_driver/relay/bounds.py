"""How long a call of the client may take in all, for callers that wait on it from outside the
event loop (``SyncZone``).

A request method is bounded by its ``timeout`` argument when given, else by the client's
``timeout``. A method that makes more than one request declares its own bound with
``bounded_by`` next to its definition (``Zone.result``: one ask per chunk of its wait).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, TypeVar

__all__ = ["bounded_by", "seconds_bound"]

F = TypeVar("F", bound=Callable[..., Any])


class _Client(Protocol):
    timeout: float


def bounded_by(bound: Callable[..., float]) -> Callable[[F], F]:
    """Give a request method its own bound: ``bound(client, *args, **kwargs)``, the seconds a
    call with those arguments may take in all."""

    def mark(method: F) -> F:
        setattr(method, "_seconds_bound", bound)
        return method

    return mark


def seconds_bound(client: _Client, name: str, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> float:
    """The seconds ``client.<name>(*args, **kwargs)`` may take in all: the method's own bound
    if it has one, else its ``timeout`` argument when given, else the client's timeout."""
    bound = getattr(getattr(type(client), name), "_seconds_bound", None)
    if bound is not None:
        return float(bound(client, *args, **kwargs))
    timeout = kwargs.get("timeout")
    return client.timeout if timeout is None else float(timeout)
