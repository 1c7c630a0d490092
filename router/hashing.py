"""Chained prefix-block hashes, bit-for-bit equal to vLLM's ``sha256_cbor`` ones.

Algorithm (vLLM 0.32, ``vllm/v1/core/kv_cache_utils.py`` and ``vllm/utils/hashing.py``):

* ``H(x) = sha256(cbor2.dumps(x, canonical=True)).digest()`` (32 bytes).
* The chain starts at ``NONE_HASH = H(seed)``, ``seed`` being the engine process's
  ``PYTHONHASHSEED`` string if set, else the constant ``"vllm-none-hash"``.
* Each *full* block of ``block_size`` prompt tokens gets
  ``p = H((p, tuple(block_token_ids), extra_keys))``; a trailing partial block is
  never hashed, so it can never be a prefix-cache hit.
* ``extra_keys`` is ``None`` unless the request carries a LoRA adapter or a
  ``cache_salt`` (multimodal inputs and prompt embeddings also add keys; this
  router does not route those). Otherwise it is a tuple, in this order:
  ``("lora", lora_name, lora_path)`` on *every* block, then
  ``("cache_salt", salt)`` on the *first* block only, and only for a non-empty
  salt (vLLM tests ``start_token_idx == 0 and request.cache_salt``).
* The parent of the next block is the full 32-byte digest. KV events publish
  each digest as ``int.from_bytes(digest, "big") & (2**64 - 1)``, i.e. its last
  eight bytes (``maybe_convert_block_hash``, on by default through
  ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``). That 64-bit int is ``BlockHash``.

The engines must run with ``prefix_caching_hash_algo="sha256_cbor"``: vLLM's default
``"sha256"`` hashes a pickle, which this module does not reproduce, and the xxhash
variants use a random seed unless ``PYTHONHASHSEED`` is set.

Caches, both exact (their keys hold the packed token ids, never a hash of them) and
bounded by ``memo_blocks`` blocks each, so that a prompt pays SHA-256 only for the
blocks it does not share with recent ones:

1. The prompt's ids are packed once as uint32 (``array``, one C loop), unless they
   arrive packed: the router's tokenizer builds them as an ``array("I")``
   (``serving/routing/prompt_tokens.py``), whose bytes are one copy. The chain
   cache maps (chain root, extra keys, packed first block) to the last chain hashed
   from that first block: its packed ids, digests and BlockHashes. The request's
   packed ids are compared with that chain's in C (``bytes.startswith``, one
   memcmp when the whole overlap matches, else a binary search over blocks), and
   the digests of the equal leading blocks are copied.
2. Each block after that is looked up in the block memo, (parent digest, packed
   block, extra keys) -> digest, which remembers blocks of other chains from the
   same first block (documents that alternate after one system prompt), and is
   hashed only when absent there too. The request's chain then replaces the
   remembered one for its first block.

Cost, measured on one core of a 2-CPU AMD EPYC for a 4,096-token prompt in 128-token
blocks (``bench/decision_cost.py``): packing about 5 ns a token (about 20 us), the
floor of every call whose ids are not packed already (about 1 us when they are); a
prompt that repeats or extends a remembered chain then adds about 3 us, plus one
block hash for each block past it. A block hashed afresh is one
``cbor2.dumps`` of its ids (most of the cost) and one SHA-256 of about
``3 * block_size + 40`` bytes, the other CBOR pieces (array header, digest header,
extra keys) pre-encoded once per call: about 5.5 us per 128-token block (0.18 ms for
a 4k-token prompt nobody sent before) and 2.2 us per 16-token block (0.57 ms). A
block memo hit costs well under 1 us. This is the costliest step of a routing
decision; the ring lookup (``ring.py``) and ownership probe (``ownership.py``) are
O(log n).
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Mapping, Sequence
from typing import Final, Generic, NewType, TypeVar, cast

import cbor2

# The engine's prefix-cache key of one full block as published in KV events:
# the low 64 bits of the chained SHA-256 digest. An int so that events, the
# ownership index and the ring all share one cheap, hashable key type.
BlockHash = NewType("BlockHash", int)

# vLLM's DEFAULT_NONE_HASH_SEED: the chain's root when the engine's
# PYTHONHASHSEED is unset. Changing it (here or in the engines) changes every
# block hash, so the router's keys stop matching the engines' KV events and
# every router instance must change in the same deploy or their rings disagree.
DEFAULT_HASH_SEED: Final[str] = "vllm-none-hash"

_LOW_64_BITS: Final[int] = (1 << 64) - 1
# CBOR head of a 3-element array followed by the head of a 32-byte byte string:
# the fixed start of every encoded (parent_digest, tokens, extra_keys) tuple.
_TUPLE_AND_DIGEST_HEAD: Final[bytes] = b"\x83\x58\x20"
_CBOR_NONE: Final[bytes] = cbor2.dumps(None)


def engine_hash_seed(engine_environ: Mapping[str, str]) -> str:
    """Return the seed a ``sha256_cbor`` engine started with ``engine_environ`` uses.

    Mirrors ``resolve_none_hash_seed``: ``PYTHONHASHSEED`` wins when set (even
    ``"random"`` or ``"0"``, taken as a plain string), else the fixed default.
    """
    return engine_environ.get("PYTHONHASHSEED", DEFAULT_HASH_SEED)


def to_block_hash(engine_hash: int | bytes) -> BlockHash:
    """Convert a hash as found in a KV event (int, or 32-byte digest) to a BlockHash.

    Engines started with ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0`` publish the
    raw digest; truncating it the way vLLM does makes both forms comparable.
    """
    if isinstance(engine_hash, bytes):
        return BlockHash(int.from_bytes(engine_hash, "big") & _LOW_64_BITS)
    return BlockHash(engine_hash & _LOW_64_BITS)


# Recently hashed blocks remembered per hasher. Shared system prompts repeat the
# same blocks request after request; a hit costs a bytes slice and a dict probe
# (well under 1 us per block) instead of a CBOR encode and a SHA-256 (about 5 us
# per 128-token block). 32,768 entries hold 4M tokens of prefixes at 128-token
# blocks in about 25 MB (the key keeps the block's packed tokens, so a hit is
# exact, not probable). The same number bounds the blocks held by the chain
# cache (``_Chain``): about 20 MB more at 128-token blocks (measured with
# tracemalloc: 1.3 KB a block for both caches together), 6 MB at 16-token blocks.
DEFAULT_MEMO_BLOCKS: Final[int] = 32_768
# Packed token width in the memo keys ("I" is 4 bytes on every supported platform).
_TOKEN_BYTES: Final[int] = array("I").itemsize


_K = TypeVar("_K")
_V = TypeVar("_V")


class _Generations(Generic[_K, _V]):
    """A bounded map of ``weight``-counted values: two generations approximate LRU at O(1).

    Lookups hit ``young`` then ``old``, moving a hit from ``old`` to ``young``; when
    ``young`` would pass half the budget it becomes ``old`` and the previous ``old``
    is dropped, so at most ``max_weight`` is held. A ``weighted`` map remembers each
    young entry's weight, so that replacing a value (the chain cache puts a prompt's
    latest chain under the key of its first block, request after request) counts the
    new weight instead of adding it: otherwise a few long prompts sent again and again
    fill ``young`` with weight it does not hold, and it rotates while holding a
    fraction of the budget, dropping other chains early and freeing a generation in
    one call (at 16-token blocks, ``bench.decision_cost``'s 4k-token prompts rotated
    the chain cache once every 64 calls; now not at all).
    Concurrent use from several threads can at worst lose an insert or miscount a
    weight until the next rotation, never return a wrong value: each dict operation
    is atomic and values are never mutated.
    """

    __slots__ = ("_half", "_old", "_old_weights", "_weighted", "_young", "_young_weight",
                 "_young_weights")

    def __init__(self, max_weight: int, *, weighted: bool = False) -> None:
        self._half = max(0, max_weight // 2)
        self._weighted = weighted
        self._young: dict[_K, _V] = {}
        self._old: dict[_K, _V] = {}
        self._young_weights: dict[_K, int] = {}
        self._old_weights: dict[_K, int] = {}
        self._young_weight = 0

    @property
    def enabled(self) -> bool:
        return self._half > 0

    def get(self, key: _K) -> _V | None:
        value = self._young.get(key)
        if value is None:
            # Moved, not copied: a generation dropped later holds only what was not used.
            value = self._old.pop(key, None)
            if value is not None:
                self.put(key, value, self._old_weights.pop(key, 1))
        return value

    def put(self, key: _K, value: _V, weight: int = 1) -> None:
        if weight > self._half:
            return  # also covers a disabled map (half 0)
        weights = self._young_weights
        replaced = weights.get(key, 0) if self._weighted else 0
        if self._young_weight - replaced + weight > self._half:
            self._old, self._old_weights = self._young, weights
            self._young, self._young_weights = {}, {}
            weights = self._young_weights
            self._young_weight = replaced = 0
        self._young[key] = value
        if self._weighted:
            weights[key] = weight
        self._young_weight += weight - replaced


# One remembered chain: its packed tokens (a trailing partial block included: cutting
# it off would copy the rest), the digests and BlockHashes of its full blocks (lists
# that are never mutated once stored).
_Chain = tuple[bytes, list[bytes], list[BlockHash]]
# A memo key: (parent digest, packed block tokens, extra keys' CBOR).
_BlockKey = tuple[bytes, bytes, bytes]
# A chain key: (chain root, first block's and later blocks' extra keys' CBOR,
# packed first block).
_ChainKey = tuple[bytes, bytes, bytes, bytes]


def _common_blocks(packed: memoryview, end: int, known: bytes, width: int) -> int:
    """How many leading ``width``-byte blocks of ``packed[:end]`` equal ``known``'s
    (a trailing partial block of ``known`` does not count).

    The caller guarantees the first block is equal. One C-level comparison when
    the whole overlap matches (a repeated prompt, or one that extends a known
    one); otherwise a binary search whose probes compare only the bytes not yet
    known equal, so about ``end`` bytes are compared in all.
    """
    limit = min(end, len(known) - len(known) % width)
    if known.startswith(packed[:limit]):
        return limit // width
    low, high = 1, limit // width - 1  # invariant: blocks [0, low) equal, high + 1 differs
    while low < high:
        mid = (low + high + 1) // 2
        if known.startswith(packed[low * width : mid * width], low * width):
            low = mid
        else:
            high = mid - 1
    return low


def _extra_keys_cbor(cache_salt: str | None, lora_name: str | None,
                     lora_path: str | None) -> tuple[bytes, bytes]:
    """CBOR of the extra keys of a chain's first block and of its later blocks."""
    if lora_name is None and not cache_salt:
        return _CBOR_NONE, _CBOR_NONE  # the common case, with nothing to encode
    lora_keys: tuple[tuple[str, str, str], ...] = (
        (("lora", lora_name, lora_path),)
        if lora_name is not None and lora_path is not None
        else ()
    )
    salt_keys: tuple[tuple[str, str], ...] = (
        (("cache_salt", cache_salt),) if cache_salt else ()
    )
    first_keys = lora_keys + salt_keys
    first_tail = cbor2.dumps(first_keys, canonical=True) if first_keys else _CBOR_NONE
    rest_tail = cbor2.dumps(lora_keys, canonical=True) if lora_keys else _CBOR_NONE
    return first_tail, rest_tail


def _sha256_cbor(obj: object) -> bytes:
    return hashlib.sha256(cbor2.dumps(obj, canonical=True)).digest()


class PrefixHasher:
    """Computes the engine's chained block hashes for a token sequence.

    Safe to share between threads: its caches only ever return exact results
    (class docstring of ``_Generations``).
    """

    __slots__ = ("_block_size", "_chains", "_memo", "_root", "_seed")

    def __init__(self, block_size: int, seed: str = DEFAULT_HASH_SEED, *,
                 memo_blocks: int = DEFAULT_MEMO_BLOCKS) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self._block_size = block_size
        self._seed = seed
        self._root = _sha256_cbor(seed)  # vLLM's NONE_HASH for this seed
        self._memo: _Generations[_BlockKey, bytes] = _Generations(memo_blocks)
        # (chain root, first and later extra keys, packed first block) -> the last
        # chain hashed from that first block, weighted by its blocks. A repeated or
        # extended prompt then costs one comparison of packed tokens instead of a
        # memo probe per block.
        self._chains: _Generations[_ChainKey, _Chain] = _Generations(memo_blocks,
                                                                      weighted=True)

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def seed(self) -> str:
        return self._seed

    def digests(
        self,
        token_ids: Sequence[int],
        *,
        cache_salt: str | None = None,
        lora_name: str | None = None,
        lora_path: str | None = None,
        max_blocks: int | None = None,
        parent: bytes | None = None,
    ) -> list[bytes]:
        """Full 32-byte digests of the first ``max_blocks`` full blocks (all if None).

        ``lora_name`` and ``lora_path`` go together: vLLM keys a LoRA block by
        both, so that re-pointing a name at another adapter does not reuse KV.
        ``parent`` continues a chain: the digest of the full block just before
        ``token_ids``, so that ``digests(a + b) == digests(a) + digests(b,
        parent=digests(a)[-1])`` when ``len(a)`` is a multiple of the block size.
        A continued chain has no first block, hence no ``cache_salt`` key; callers
        that hash a shared prefix once (a simulator) use it.
        """
        return self._chain(token_ids, cache_salt, lora_name, lora_path, max_blocks, parent)[0]

    def block_hashes(
        self,
        token_ids: Sequence[int],
        *,
        cache_salt: str | None = None,
        lora_name: str | None = None,
        lora_path: str | None = None,
        max_blocks: int | None = None,
    ) -> list[BlockHash]:
        """The 64-bit hashes the engine publishes in KV events, one per full block."""
        return self._chain(token_ids, cache_salt, lora_name, lora_path, max_blocks, None)[1]

    def _chain(
        self,
        token_ids: Sequence[int],
        cache_salt: str | None,
        lora_name: str | None,
        lora_path: str | None,
        max_blocks: int | None,
        parent: bytes | None,
    ) -> tuple[list[bytes], list[BlockHash]]:
        """Digests and BlockHashes of the full blocks; fresh lists the caller may keep."""
        if (lora_name is None) != (lora_path is None):
            raise ValueError("lora_name and lora_path must be given together")
        size = self._block_size
        num_blocks = len(token_ids) // size
        if max_blocks is not None:
            num_blocks = min(num_blocks, max(max_blocks, 0))
        if num_blocks == 0:
            return [], []
        # Ids already packed (``array("I")``, as the router's tokenizer builds them)
        # need no pack: their bytes are one copy. cbor2 cannot encode arbitrary
        # sequence types; lists and tuples both encode as CBOR arrays, as vLLM's
        # tuple(block) does, and a packed block is unpacked when it is hashed.
        is_packed = isinstance(token_ids, array) and token_ids.typecode == "I"
        tokens = token_ids if is_packed or isinstance(token_ids, (list, tuple)) \
            else list(token_ids)
        first_tail, rest_tail = _extra_keys_cbor(cache_salt, lora_name, lora_path)
        if parent is not None:
            first_tail = rest_tail
        root = self._root if parent is None else parent

        # Both caches key on the prompt's tokens packed as uint32: one C-level
        # pack of the whole prompt (about 5 ns a token, the floor of this path
        # for ids not packed already), then per block a bytes slice whose hash
        # CPython computes once and caches. Ids outside uint32 skip both caches.
        packed = None
        if self._memo.enabled:
            used = num_blocks * size
            # The trailing partial block is packed too: slicing it off would cost more.
            source = tokens if len(tokens) - used < size else tokens[:used]
            try:
                packed = source.tobytes() if is_packed \
                    else array("I", source).tobytes()  # type: ignore[union-attr]
            except (OverflowError, TypeError):
                packed = None
        if packed is None:
            return self._extend(tokens.tolist() if is_packed else tokens,  # type: ignore[union-attr]
                                None, 0, num_blocks, root, first_tail, rest_tail, [], [])

        width = size * _TOKEN_BYTES
        end = num_blocks * width
        # The key names everything the first digest depends on, and the chain's
        # later digests depend only on it and the later blocks, which
        # _common_blocks compares byte for byte: a hit is exact.
        key = (root, first_tail, rest_tail, packed[:width])
        chains = self._chains
        known = chains.get(key)
        if known is None:
            digests: list[bytes] = []
            hashes: list[BlockHash] = []
            start = 0
        else:
            known_packed, known_digests, known_hashes = known
            start = _common_blocks(memoryview(packed), end, known_packed, width)
            digests = known_digests[:start]
            hashes = known_hashes[:start]
            if start == num_blocks:
                return digests, hashes
            root = digests[-1]
        self._extend(tokens, packed, start, num_blocks, root,
                     first_tail if start == 0 else rest_tail, rest_tail, digests, hashes,
                     is_packed=is_packed)
        # The latest chain from this first block replaces the previous one: a
        # conversation's next turn extends it, a shared prefix's next request
        # diverges from it only in its last blocks.
        chain: _Chain = (packed, digests[:], hashes[:])
        chains.put(key, chain, num_blocks)
        return digests, hashes

    def _extend(
        self,
        tokens: Sequence[int],
        packed: bytes | None,
        start_block: int,
        num_blocks: int,
        parent: bytes,
        first_tail: bytes,
        rest_tail: bytes,
        digests: list[bytes],
        hashes: list[BlockHash],
        *,
        is_packed: bool = False,
    ) -> tuple[list[bytes], list[BlockHash]]:
        """Append the digests and BlockHashes of blocks ``start_block`` up to
        ``num_blocks``; ``parent`` is the digest before ``start_block``. ``tokens``
        is an ``array("I")`` when ``is_packed``, else a list or tuple."""
        # Hot loop: a slice, one C-level CBOR encode of plain ints (canonical
        # and default encodings agree for ints and arrays), one concatenation
        # and one SHA-256 per block not in the memo. The memo key also holds the
        # extra keys' encoding, so salted, LoRA and plain chains never share an
        # entry. Attribute lookups are hoisted.
        size = self._block_size
        sha256 = hashlib.sha256
        dumps = cbor2.dumps
        from_bytes = int.from_bytes
        head = _TUPLE_AND_DIGEST_HEAD
        memo = self._memo
        width = size * _TOKEN_BYTES
        append_digest = digests.append
        append_hash = cast("list[int]", hashes).append
        tail = first_tail
        for block in range(start_block, num_blocks):
            start = block * size
            key = (parent, packed[block * width : block * width + width], tail) \
                if packed is not None else None
            digest = memo.get(key) if key is not None else None
            if digest is None:
                block_ids = tokens[start : start + size]
                digest = sha256(head + parent + dumps(
                    block_ids.tolist() if is_packed else block_ids) + tail).digest()  # type: ignore[union-attr]
                if key is not None:
                    memo.put(key, digest)
            parent = digest
            append_digest(digest)
            # The low 64 bits of a big-endian digest are its last eight bytes
            # (a BlockHash; NewType's call would cost a Python call per block).
            append_hash(from_bytes(digest[24:], "big"))
            tail = rest_tail
        return digests, hashes
