"""Why a request went where it went: one bounded set of values, used as a metric label.

Each routing path of ``policy.py`` ends in exactly one of these; dashboards count
them to explain cache hit rates (many SPILLs mean the load bound is too tight or
the fleet too small; many NO_KEYs mean requests arrive without token ids).
"""

from __future__ import annotations

from enum import Enum


class Outcome(str, Enum):
    # A replica already holds the longest matching prefix (router- or engine-known).
    OWNER_HIT = "owner_hit"
    # No replica holds the prefix; it went to its key's home on the ring.
    RING_HOME = "ring_home"
    # No replica holds the prefix and its home was above the mean load: the first
    # replica along the ring at or below it took it (a first request misses anywhere).
    RING_BALANCE = "ring_balance"
    # The home (or session home) was at its bounded-load capacity; next on the ring.
    SPILL = "spill"
    # No owned prefix; it went to the home of its session id.
    SESSION = "session"
    # The chosen replica failed; this is the next one of the ranked fallbacks.
    FAILOVER = "failover"
    # No full block and no session: least loaded replica.
    NO_KEY = "no_key"

    def __str__(self) -> str:
        # Metric labels and logs want "spill", not "Outcome.SPILL".
        return self.value
