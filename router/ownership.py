"""Which replicas hold which prefix blocks: a bounded, expiring block-hash index.

Data: an LRU-ordered map ``BlockHash -> {replica_id: expires_at}``; each block's
owner map also carries ``floor``, a lower bound of its owners' expiry times. Two sources
feed it: the router's own decisions (``learn``: the chosen replica is about to
compute and cache those blocks) and the engines' KV events (``confirm`` on
BlockStored, ``forget`` on BlockRemoved, ``clear`` on AllBlocksCleared). Without
events the index is a guess that ages out after ``ttl_s``; with events it
converges on the engines' real caches, and every router instance subscribed to
the same events converges on the same view.

Invariant kept on purpose: ownership is *prefix-closed* along a chain, i.e. if a
replica holds block k of a prompt it holds blocks 0..k-1. Chains are inserted
tail first, so the head ends up most recently used and the LRU bound evicts
tails first; vLLM also frees a request's blocks tail first, so its evictions
keep the property. That lets ``longest_prefix`` search the chain in O(log n)
probes. If the property is broken (an event lost mid-chain), the answer is a prefix
that is too short or too long: a worse routing guess, never a wrong response.

TTL check in O(1): a probe must know whether a block has a live owner, and a hot
prefix's block has hundreds of owners (every replica its traffic spilled onto).
Refreshing an owner only raises its expiry, and removing one cannot lower the
minimum, so ``floor`` (set to the exact minimum whenever the owners are scanned)
stays a lower bound without being updated; ``floor > now`` proves every owner live.
Only when ``floor`` has passed does a probe scan the owners, dropping expired pairs
and resetting ``floor`` to the minimum of the rest. Each scan pushes ``floor`` to the
least recently refreshed owner's expiry, so a block whose owners keep being
refreshed is scanned about once per ``ttl_s`` minus the longest gap between
refreshes: O(1) amortised.

Refresh once per interval: a prefix asked for again and again (a tenant's system
prompt, a conversation) would have every one of its blocks written and moved per
request, 255 blocks for a 4k-token prompt in 16-token blocks, though they were all
written moments before. ``learn`` writes only the blocks after the longest head of
the chain it wrote for the same replica less than ``refresh_s`` ago (default a tenth
of ``ttl_s``), and gives them the expiry of that head's last block. So along a learned
chain no block expires after a block before it, which makes the fresh blocks a head
of the chain that ``learn`` finds as ``longest_prefix`` searches; every block of the
chain expires at most ``refresh_s`` early; and a repeated prompt costs O(log n)
probes and its new blocks. memcached skips re-linking an item used in the last minute for the same
reason. Two rules keep this true:
- an event vouches for the blocks it names, not for the chain before them, so
  ``confirm`` writes ``ttl_s - refresh_s`` from now, which is never fresh enough to
  stop a learn, and it never lowers an expiry;
- the fresh head a learn skipped was not moved to the LRU end, so the
  interval is kept under half the time since the entries the LRU bound evicts were
  last moved (``_evict``): a small or busy index shortens it, down to 0 (every block
  written every time).
A block removed out of order (an event, ``drop``, or the LRU bound before the
interval has shrunk to it) can leave a hole in a chain until the chain is written
whole again, at most ``refresh_s`` later: a worse guess meanwhile.

Cost: ``longest_prefix`` O(log n) dict probes of O(1) each for an n-block chain (plus the
amortised scans above), and O(k) for the frozenset of k owners it returns;
``owners_of_longest_prefix`` hands the owner map itself (no copy) to the policy,
which reads it before anything else changes the index. ``learn`` O(log h + new blocks)
within the refresh interval, else O(h) for h hashes; ``confirm`` / ``forget`` / ``drop`` O(h);
``clear`` O(entries), acceptable because engines clear their caches and replicas leave
rarely. Memory is about 340 bytes per entry (200k entries: about 65 MB, measured
before ``moved`` added 8 bytes to each). Expired pairs are dropped lazily when
probed, or by the LRU bound.

Compared with the ring (``ring.py``), this is state, learned per instance; the
ring is the stateless fallback when nobody owns a prefix.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from router.hashing import BlockHash


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """The longest owned prefix of a chain and the replicas that own it."""

    owners: frozenset[str]
    matched_blocks: int


_NO_MATCH = PrefixMatch(owners=frozenset(), matched_blocks=0)


class _Owners(dict[str, float]):
    """One block's owners, replica id -> expiry time, and ``floor``: a lower bound
    of those expiries (module docstring), so ``floor > now`` means all are live.

    ``removals`` counts owners ever removed. Owners are only ever added at the end
    (a dict keeps insertion order; a refresh keeps the position), so a reader that
    remembers ``removals`` and ``len`` can tell, while ``removals`` has not moved,
    that exactly the last ``len - remembered len`` owners are new (``owner_loads.py``).
    """

    __slots__ = ("floor", "moved", "removals")

    floor: float
    # When the entry was last moved to the LRU end (``OwnershipIndex._evict``).
    moved: float
    removals: int


_NO_OWNERS: Mapping[str, float] = {}

# The longest a learned chain stays fresh enough not to be written again, as a share
# of ``ttl_s`` (module docstring, "Refresh once per interval").
DEFAULT_REFRESH_SHARE = 0.1


class OwnershipIndex:
    """Block hash -> owning replicas, LRU-bounded by hashes and expiring per pair.

    Not thread-safe; the policy serialises access.
    """

    __slots__ = ("_clock", "_entries", "_latest", "_max_entries", "_max_refresh_s",
                 "_refresh_s", "_ttl_s")

    def __init__(
        self,
        *,
        max_entries: int,
        ttl_s: float,
        refresh_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        if refresh_s is None:
            refresh_s = ttl_s * DEFAULT_REFRESH_SHARE
        if not 0 <= refresh_s < ttl_s:
            raise ValueError(f"refresh_s must be >= 0 and < ttl_s, got {refresh_s}")
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        # The refresh interval in force: ``refresh_s`` until the LRU bound evicts
        # entries younger than twice that (``_evict``).
        self._max_refresh_s = refresh_s
        self._refresh_s = refresh_s
        self._clock = clock
        # Oldest first. Values map replica id -> monotonic expiry time.
        self._entries: OrderedDict[BlockHash, _Owners] = OrderedDict()
        # The latest expiry written (``learn``, ``confirm``): no floor is above it.
        self._latest = -math.inf

    def __len__(self) -> int:
        """Number of block hashes held (including not yet purged expired ones)."""
        return len(self._entries)

    def learn(self, replica: str, hashes: Sequence[BlockHash]) -> None:
        """Record that ``replica`` was sent these blocks (a chain, head first).

        Writes only the blocks after the longest head of the chain that was written
        for ``replica`` less than ``refresh_s`` ago (module docstring, "Refresh once per
        interval"), so a prefix asked for again and again costs its new tail blocks,
        not its whole length.
        """
        now = self._clock()
        expires_at = now + self._ttl_s
        entries = self._entries
        get = entries.get
        # Every floor is an expiry written before (or the least of some), so none is
        # above ``_latest``: an expiry at or past it cannot lower a floor, and the
        # per-block compare is skipped (the clock only goes forward, but for a clock
        # that went back the compare below keeps each floor a bound).
        check_floor = expires_at < self._latest
        if not check_floor:
            self._latest = expires_at
        # The blocks written for this replica within the interval are a head of the
        # chain (no block's expiry exceeds an earlier block's). Its end is searched
        # for as ``owners_of_longest_prefix`` searches, from the tail first (blocks
        # n-1, n-2, n-4, ...), since a repeated prompt's new blocks are few, then by
        # bisection: O(log) probes either way.
        fresh = 0
        if self._refresh_s > 0:
            fresh_after = expires_at - self._refresh_s
            n = len(hashes)
            high = n  # invariant: hashes[:fresh] fresh, hashes[high:] not
            back = 1
            while fresh < high:
                probe = n - back if n - back > fresh else fresh
                owners = get(hashes[probe])
                if owners is not None and owners.get(replica, 0.0) > fresh_after:
                    fresh = probe + 1
                    break
                high = probe
                back += back
            while fresh < high:
                mid = (fresh + high) // 2
                owners = get(hashes[mid])
                if owners is not None and owners.get(replica, 0.0) > fresh_after:
                    fresh = mid + 1
                else:
                    high = mid
            if fresh:
                # The blocks after the fresh head take its last block's expiry: still
                # none later than the block before it.
                expires_at = entries[hashes[fresh - 1]][replica]
                check_floor = True
        # Tail first, so the chain's head is the most recently used entry and
        # the LRU bound below evicts tails before heads (prefix-closure). The
        # method is looked up once: per block that lookup cost half the loop.
        move_to_end = entries.move_to_end
        for block_hash in reversed(hashes[fresh:]):
            owners = get(block_hash)
            if owners is None:
                owners = entries[block_hash] = _Owners()
                owners[replica] = owners.floor = expires_at
                owners.removals = 0
            else:
                owners[replica] = expires_at
                move_to_end(block_hash)
                # A refresh cannot lower the minimum expiry, unless it writes the
                # fresh head's expiry or the clock went back: then compare.
                if check_floor and expires_at < owners.floor:
                    owners.floor = expires_at
            owners.moved = now
        if len(entries) > self._max_entries:
            self._evict(now)

    def confirm(self, replica: str, hashes: Sequence[BlockHash]) -> None:
        """Record that ``replica``'s engine stored these blocks (KV event BlockStored).

        An event names only the blocks just stored, not the chain before them, so the
        expiry it writes is ``refresh_s`` short of a full ``ttl_s``: never recent enough
        for ``learn`` to stop at, since only a learned chain vouches for its head. It
        never lowers an expiry already written.
        """
        now = self._clock()
        # Short by the longest interval, not the one in force: never fresh for a learn.
        expires_at = now + self._ttl_s - self._max_refresh_s
        if expires_at > self._latest:
            self._latest = expires_at
        entries = self._entries
        get = entries.get
        move_to_end = entries.move_to_end
        for block_hash in reversed(hashes):
            owners = get(block_hash)
            if owners is None:
                owners = entries[block_hash] = _Owners()
                owners[replica] = owners.floor = expires_at
                owners.removals = 0
                owners.moved = now
                continue
            known = owners.get(replica)
            if known is None or known < expires_at:
                owners[replica] = expires_at
                if expires_at < owners.floor:
                    owners.floor = expires_at
            move_to_end(block_hash)
            owners.moved = now
        if len(entries) > self._max_entries:
            self._evict(now)

    def _evict(self, now: float) -> None:
        """Drop the least recently used entries down to ``max_entries``, and keep the
        refresh interval under half the time since they were last used: the blocks a
        ``learn`` stops short of were moved within the interval, so the LRU bound
        reaches them only after they are written again."""
        entries = self._entries
        last_moved = -math.inf
        while len(entries) > self._max_entries:
            moved = entries.popitem(last=False)[1].moved
            if moved > last_moved:
                last_moved = moved
        self._refresh_s = min(self._max_refresh_s, max((now - last_moved) / 2, 0.0))

    def forget(self, replica: str, hashes: Iterable[BlockHash]) -> None:
        """Drop ``replica`` from these blocks (KV event BlockRemoved)."""
        entries = self._entries
        get = entries.get
        for block_hash in hashes:
            owners = get(block_hash)
            if owners is not None and owners.pop(replica, None) is not None:
                owners.removals += 1
                if not owners:
                    del entries[block_hash]

    def drop(self, hashes: Iterable[BlockHash]) -> int:
        """Forget these blocks for every replica (a registered prefix was deleted);
        returns how many were held. A longer chain through them keeps its tail, so
        prefix-closure may break for it: a worse routing guess, never a wrong answer."""
        entries = self._entries
        dropped = 0
        for block_hash in hashes:
            if entries.pop(block_hash, None) is not None:
                dropped += 1
        return dropped

    def clear(self, replica: str) -> None:
        """Drop every block of ``replica`` (AllBlocksCleared, or replica removed). O(entries)."""
        entries = self._entries
        emptied = []
        for block_hash, owners in entries.items():
            if owners.pop(replica, None) is not None:
                owners.removals += 1
                if not owners:
                    emptied.append(block_hash)
        for block_hash in emptied:
            del entries[block_hash]

    def blocks_by_replica(self) -> dict[str, int]:
        """Blocks held per replica, expired pairs included until purged. O(entries);
        for telemetry scrapes, not the routing path."""
        counts: dict[str, int] = {}
        for owners in self._entries.values():
            for replica in owners:
                counts[replica] = counts.get(replica, 0) + 1
        return counts

    def owners(self, block_hash: BlockHash) -> frozenset[str]:
        """Replicas currently (not expired) holding ``block_hash``."""
        return frozenset(self._live_owners(block_hash, self._clock()))

    def longest_prefix(self, hashes: Sequence[BlockHash]) -> PrefixMatch:
        """The longest prefix ``hashes[:m]`` whose last block has a live owner.

        A search from the tail, then bisection, relying on prefix-closure (module
        docstring): O(log n).
        """
        matched, owners = self.owners_of_longest_prefix(hashes)
        if not matched:
            return _NO_MATCH
        return PrefixMatch(owners=frozenset(owners), matched_blocks=matched)

    def owners_of_longest_prefix(
        self, hashes: Sequence[BlockHash]
    ) -> tuple[int, Mapping[str, float]]:
        """``longest_prefix`` as ``(matched_blocks, owners)``, ``owners`` being the last
        matched block's live owner map itself, not a copy: O(log n) with no O(k) step.

        The map is the index's own; read it before the next call that changes the
        index (the policy does, under its lock) and never change it.
        """
        now = self._clock()
        get = self._entries.get
        found: Mapping[str, float] = _NO_OWNERS
        # Invariant: hashes[:low] is owned, no prefix longer than high is. A prompt
        # that repeats a known prefix (a tenant's system prompt, a conversation's
        # history) ends in a few new blocks or none, so the end of the owned prefix
        # is looked for from the tail first, at blocks n-1, n-2, n-4, n-8, ..., then
        # by bisection: one probe for no new block and two for one, against about
        # log2(n) for bisection alone; about 2 log2(n) when nothing is owned. Each
        # probe costs a few cache misses when the router runs amid other work,
        # where most of a decision's time goes (docs/benchmarks/results.md).
        n = len(hashes)
        low, high = 0, n
        back = 1
        while low < high:
            probe = n - back if n - back > low else low
            owners = get(hashes[probe])
            # The floor decides in O(1) unless it has passed (module docstring).
            if owners is not None and (owners.floor > now or self._purge(hashes[probe], now)):
                low, found = probe + 1, owners
                break
            high = probe
            back += back
        while low < high:
            mid = (low + high + 1) // 2
            owners = get(hashes[mid - 1])
            if owners is not None and (owners.floor > now or self._purge(hashes[mid - 1], now)):
                low, found = mid, owners
            else:
                high = mid - 1
        return low, found

    def _purge(self, block_hash: BlockHash, now: float) -> bool:
        """Drop ``block_hash``'s expired owners and reset its floor to the exact minimum
        of the rest, O(k); True if any is left (the entry goes when none is)."""
        owners = self._entries[block_hash]
        expired = [replica for replica, expires_at in owners.items() if expires_at <= now]
        for replica in expired:
            del owners[replica]
        owners.removals += len(expired)
        if not owners:
            del self._entries[block_hash]
            return False
        owners.floor = min(owners.values())
        return True

    def _live_owners(self, block_hash: BlockHash, now: float) -> list[str]:
        owners = self._entries.get(block_hash)
        if owners is None or not (owners.floor > now or self._purge(block_hash, now)):
            return []
        return list(owners)
