"""A result that arrives later, for the monitor's single-threaded reactor.

Every operation that waits on another process (the key keeper, the runner, a BBRAM commit)
returns a :class:`Deferred`; the monitor answers the host when it resolves.
"""

from __future__ import annotations

from typing import Any, Callable

from ..abi.errors import Internal, ZoneError
from ..runtime.console import log_exception

__all__ = ["Deferred"]


class Deferred:
    """Resolved once, with a value or a ZoneError; then its callbacks run, in order."""

    __slots__ = ("_callbacks", "done", "value", "error")

    def __init__(self) -> None:
        self._callbacks: list[Callable[[Deferred], None]] = []
        self.done = False
        self.value: Any = None
        self.error: ZoneError | None = None

    def add(self, callback: Callable[["Deferred"], None]) -> None:
        if self.done:
            callback(self)
        else:
            self._callbacks.append(callback)

    def resolve(self, value: Any = None, error: ZoneError | None = None) -> None:
        if self.done:
            return
        self.done, self.value, self.error = True, value, error
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def then(self, transform: Callable[[Any], Any]) -> "Deferred":
        """A Deferred of ``transform(value)`` (which may itself return a Deferred); errors pass
        through, a ZoneError that ``transform`` raises becomes the error, and any other
        exception (a zone bug) becomes ``internal``, logged: a request is always answered."""
        out = Deferred()

        def chain(d: Deferred) -> None:
            if d.error is not None:
                out.resolve(error=d.error)
                return
            try:
                value = transform(d.value)
            except ZoneError as exc:
                out.resolve(error=exc)
                return
            except Exception as exc:  # a zone bug: the request is still answered (internal)
                log_exception("a deferred step failed")
                out.resolve(error=Internal(f"{type(exc).__name__}: {exc}"[:200]))
                return
            if isinstance(value, Deferred):
                value.add(lambda inner: out.resolve(inner.value, inner.error))
            else:
                out.resolve(value)

        self.add(chain)
        return out

    @staticmethod
    def of(value: Any = None) -> "Deferred":
        done = Deferred()
        done.resolve(value)
        return done

    @staticmethod
    def failed(error: ZoneError) -> "Deferred":
        done = Deferred()
        done.resolve(error=error)
        return done
