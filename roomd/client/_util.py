"""Small Trio helpers shared by the client modules."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@contextmanager
def collapse_single() -> Iterator[None]:
    """Re-raise an exception group holding one real exception as that exception.

    A nursery wraps whatever its body raises in an exception group; an API that owns the nursery
    (``open_client``) should raise what its user expects (``ConnectFailed``, the body's own
    error). Groups of several real errors are left as they are; ``Cancelled`` alone is re-raised
    as such so that the enclosing cancel scope catches it.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        real = [exc for exc in leaves if not isinstance(exc, trio.Cancelled)]
        chosen = real[0] if len(real) == 1 else leaves[0] if not real else None
        if chosen is None:
            raise
        context = chosen.__context__
        try:
            raise chosen from chosen.__cause__
        finally:
            chosen.__context__ = context
            del chosen, context
