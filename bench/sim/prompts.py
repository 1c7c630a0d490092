"""Simulated requests: a trace request reduced to what routing and caching need.

A ``SimRequest`` keeps the prompt's length, its chained block hashes (the engine's
own, ``router.PrefixHasher``), the generation length and, for the policies that
need them, the text Ray's prefix router matches and the raw ids of a prompt too
short to have a full block. Everything else (the messages) is dropped as soon as
the request is built, so a million-request run holds only the requests in flight.

``PromptHasher`` hashes the shared part of a prompt once: a prompt is a sequence
of parts (messages, ``tokens.py``); the chain through all parts but the last is
memoised by the parts' identity, and only the last part (a user's question) is
hashed per request, continuing the chain from the memoised digest. Cost: one
SHA-256 per block of the last part (about 5 us per 128-token block), against
one per block of the whole prompt without the memo.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Final

from bench.sim.tokens import PromptTokens, prefix_text
from bench.trace import TraceRequest
from router import DEFAULT_HASH_SEED, BlockHash, PrefixHasher

# Distinct shared prefixes remembered (a workload's tenants; a trace's turns).
_MEMO_PREFIXES: Final[int] = 16_384


@dataclass(slots=True, kw_only=True)
class SimRequest:
    index: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    # Engine hashes of the prompt's full blocks, head first.
    block_hashes: list[BlockHash]
    session: str | None = None
    tenant: str | None = None
    # Only for ray-prefix: the concatenated message contents Ray's router matches.
    text: str | None = None
    # Only when the prompt has no full block: its ids (cacheroute's NO_KEY tie-break).
    short_tokens: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class _Prefix:
    parts: tuple[tuple[int, ...], ...]  # kept alive so that their ids stay theirs
    hashes: tuple[BlockHash, ...]
    last_digest: bytes | None
    rest: tuple[int, ...]  # tokens after the last full block
    num_tokens: int


class PromptHasher:
    """Block hashes of prompts given as parts, the shared prefix hashed once."""

    def __init__(self, block_size: int, seed: str = DEFAULT_HASH_SEED) -> None:
        self._block_size = block_size
        self._prefix_hasher = PrefixHasher(block_size, seed)
        # Tails are new text every time: a block memo would only churn.
        self._tail_hasher = PrefixHasher(block_size, seed, memo_blocks=0)
        self._memo: dict[tuple[int, ...], _Prefix] = {}

    @property
    def block_size(self) -> int:
        return self._block_size

    def hash_parts(self, parts: tuple[tuple[int, ...], ...]) -> tuple[int, list[BlockHash]]:
        """``(prompt tokens, block hashes)`` of the concatenated parts."""
        if not parts:
            return 0, []
        prefix = self._prefix(parts[:-1])
        tail = prefix.rest + parts[-1] if prefix.rest else parts[-1]
        digests = self._tail_hasher.digests(tail, parent=prefix.last_digest)
        from_bytes = int.from_bytes
        hashes = [*prefix.hashes, *(BlockHash(from_bytes(d[24:], "big")) for d in digests)]
        return prefix.num_tokens + len(parts[-1]), hashes

    def _prefix(self, parts: tuple[tuple[int, ...], ...]) -> _Prefix:
        key = tuple(map(id, parts))
        found = self._memo.get(key)
        if found is not None:
            return found
        tokens = tuple(chain.from_iterable(parts))
        digests = self._prefix_hasher.digests(tokens)
        full = len(digests) * self._block_size
        prefix = _Prefix(
            parts=parts,
            hashes=tuple(BlockHash(int.from_bytes(d[24:], "big")) for d in digests),
            last_digest=digests[-1] if digests else None,
            rest=tokens[full:],
            num_tokens=len(tokens),
        )
        if len(self._memo) >= _MEMO_PREFIXES:
            self._memo.clear()
        self._memo[key] = prefix
        return prefix


def sim_requests(trace: Iterable[TraceRequest], tokenizer: PromptTokens, hasher: PromptHasher,
                 *, with_text: bool = False) -> Iterator[SimRequest]:
    """The trace's requests as ``SimRequest``s, lazily, in trace order.

    Raises ``ValueError`` on a request that arrives before the previous one: the
    simulator replays open-loop arrivals in order (sort a hand-made trace by ``t``).
    """
    last_t = 0.0
    block_size = hasher.block_size
    for index, request in enumerate(trace):
        if request.t < last_t:
            raise ValueError(f"request {index} arrives at t={request.t} before the previous "
                             f"one (t={last_t}); the trace must be sorted by t")
        last_t = request.t
        parts = tokenizer.parts(request)
        num_tokens, hashes = hasher.hash_parts(parts)
        yield SimRequest(
            index=index,
            arrival_s=float(request.t),
            prompt_tokens=num_tokens,
            output_tokens=request.max_tokens,
            block_hashes=hashes,
            session=request.session,
            tenant=request.tenant,
            text=prefix_text(request) if with_text else None,
            short_tokens=tuple(chain.from_iterable(parts)) if num_tokens < block_size else None,
        )
