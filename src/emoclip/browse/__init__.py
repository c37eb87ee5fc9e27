"""Browse and search a tagged shard folder: the page (``emoclip browse``), ``emoclip search`` and ``search()``.

All three answer through one ``Browser`` (query.py); see docs/browse.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emoclip.browse.query import Browser, Query

__all__ = ["Browser", "Query", "search"]


def search(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """``emoclip.browse.query.search`` (imported on first use: numpy and pyarrow only then)."""
    from emoclip.browse.query import search as run

    return run(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name in ("Browser", "Query"):
        from emoclip.browse import query

        return getattr(query, name)
    raise AttributeError(name)
