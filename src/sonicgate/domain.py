"""Domain types every layer shares; this module imports nothing of sonicgate."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request or a connection acts for, as its credential says.

    ``id`` is ``sub:<JWT subject>``, ``key:<hash of the API key>``, or, with access
    control off, ``ip:<address>``: never anything the client merely claims.
    """

    id: str
    authenticated: bool = False  # the id comes from a verified credential
    operator: bool = False  # may see every session's events and clean up every session

    def owns(self, owner: str) -> bool:
        return self.id == owner
