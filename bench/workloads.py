"""Seeded multi-tenant chat workloads: the load a cache-aware router exists for.

Model of the load: ``T`` tenants (products built on one model), each with its own
long system prompt (about 1.3k tokens for SmolLM2's tokenizer), and short, distinct
user questions. Tenant popularity is Zipf-skewed: tenant of rank ``r`` (0-based) is
picked with weight ``1 / (r + 1) ** s``, so tenant ``t00`` is the most popular;
or, with ``per_tenant``, every tenant sends the same number of requests.
Every request shares its tenant's system prompt and nothing else, so the best
possible cache hit rate is set by how often tenants repeat (see ``oracle``).

Tenants differ from their very first token: a system prompt opens with the
tenant's company name, then a policy text drawn from a seeded RNG over a fixed
word list. Without that, all tenants would share the chat template's first block
and a first-block router would send them all to one replica.

Determinism: every random stream is its own ``random.Random`` seeded with a
string (``f"{purpose}:{seed}:..."``; string seeds are hashed with SHA-512, stable
across processes and Python versions). Tenant prompts depend only on ``seed`` and
the tenant's index, so a run with more requests or more tenants keeps the same
prompts for the tenants it shares with a smaller one. Cost: O(total words).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate

from bench.trace import TraceRequest

# Words SmolLM2's tokenizer encodes as about one token each with a leading space;
# the policy texts are drawn from them, so prompt length in tokens tracks words.
WORDS: tuple[str, ...] = tuple("""
account address agent answer approval archive audit balance batch billing board
branch budget buyer cable calendar campaign carrier case catalog channel charge
check claim client code comment contract control copy cost credit customer cycle
data date deadline delivery deposit design detail device discount dispute document
draft driver entry error estimate event evidence exchange expense export facility
fee field file filter fleet form freight fund goal grant group guide handbook
holiday hour incident income invoice issue item journal label lease ledger letter
level license limit line loan location lock log manager margin market meeting
member message method metric model month note notice number offer office order
owner package page panel partner password payment payroll period permit phone plan
policy portal price priority process product profile project quote rate receipt
record refund region release renewal report request reserve return review risk
route rule safety sample schedule score season sector service session share
shipment signal site source staff stage standard statement status stock store
supplier support survey system target task team template term ticket time token
total track trade training transfer trial unit update user value vendor version
visit voucher warehouse warranty week window work zone
always carefully clearly daily directly first never only promptly quickly
regularly securely strictly usually weekly
must should may can will
approve archive assign cancel check close confirm create deliver document escalate
export file forward handle include inspect list log notify open process protect
record reject renew report request review route schedule send sign store submit
track transfer update verify
""".split())  # noqa: SIM905 -- a word list reads best as text

_CONNECTORS = ("and", "or", "before", "after", "unless", "when", "while", "because")
_SYLLABLES = ("bra", "cor", "dan", "el", "fen", "gal", "hol", "ist", "jor", "kel",
              "lum", "mar", "nor", "ost", "pel", "quin", "ros", "sal", "tor", "ul",
              "var", "wen", "xan", "yor", "zel")
_SECTORS = ("Logistics", "Health", "Bank", "Insurance", "Energy", "Retail", "Telecom",
            "Airlines", "Foods", "Software", "Motors", "Pharma", "Media", "Realty")
_QUESTION_VERBS = ("cancel", "change", "check", "find", "renew", "transfer", "update",
                   "verify", "dispute", "export", "download", "close", "reopen", "split")
_QUESTION_NOUNS = ("invoice", "order", "ticket", "refund", "delivery", "password", "plan",
                   "contract", "payment", "shipment", "booking", "account", "warranty")

# Words of policy text giving about 1.3k SmolLM2 tokens per chat request (measured,
# seed 0, 16 tenants: system prompt alone 1,250-1,297 tokens, whole request 1,297-1,321).
DEFAULT_SYSTEM_PROMPT_WORDS = 850


@dataclass(frozen=True, kw_only=True)
class Tenant:
    name: str  # short label, "t00": rank order, t00 the most popular
    company: str
    system_prompt: str


@dataclass(frozen=True, kw_only=True)
class WorkloadSpec:
    tenants: int = 8
    requests: int = 200
    # Zipf exponent of tenant popularity; 0 = uniform, larger = more skewed.
    zipf_s: float = 1.1
    # Every tenant sends exactly this many requests, in a seeded random order
    # (``requests`` must be ``tenants`` x it; ``zipf_s`` is not used). None: Zipf picks.
    per_tenant: int | None = None
    seed: int = 0
    # Poisson arrival rate (requests per second); None puts every arrival at t=0,
    # for fixed-concurrency replay that ignores arrival times.
    rate_rps: float | None = None
    system_prompt_words: int = DEFAULT_SYSTEM_PROMPT_WORDS
    # Small: the benchmark measures prefill (TTFT) and cache hits, not decoding.
    max_tokens: int = 8

    def __post_init__(self) -> None:
        if self.tenants < 1:
            raise ValueError(f"tenants must be >= 1, got {self.tenants}")
        if self.requests < 0:
            raise ValueError(f"requests must be >= 0, got {self.requests}")
        if self.zipf_s < 0:
            raise ValueError(f"zipf_s must be >= 0, got {self.zipf_s}")
        if self.per_tenant is not None:
            if self.per_tenant < 1:
                raise ValueError(f"per_tenant must be >= 1, got {self.per_tenant}")
            if self.requests != self.tenants * self.per_tenant:
                raise ValueError(f"requests ({self.requests}) must be tenants x per_tenant "
                                 f"({self.tenants} x {self.per_tenant})")
        if self.rate_rps is not None and not self.rate_rps > 0:
            raise ValueError(f"rate_rps must be > 0, got {self.rate_rps}")
        if self.system_prompt_words < 1:
            raise ValueError(f"system_prompt_words must be >= 1, got {self.system_prompt_words}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


def zipf_weights(count: int, s: float) -> list[float]:
    """Normalised popularity of ranks 0..count-1: ``(r + 1) ** -s / sum``."""
    raw = [(rank + 1) ** -s for rank in range(count)]
    total = sum(raw)
    return [w / total for w in raw]


def company_name(rng: random.Random) -> str:
    word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))
    return f"{word.capitalize()} {rng.choice(_SECTORS)}"


def policy_text(rng: random.Random, words: int) -> str:
    """``words`` words of numbered rules drawn from ``WORDS`` (plus connectors)."""
    return numbered_text(rng, words, label="Rule")


def numbered_text(rng: random.Random, words: int, *, label: str) -> str:
    """``words`` words of sentences ``"{label} N: ..."`` drawn from ``WORDS`` (plus
    connectors); the other workloads' documents and replies use it too."""
    sentences = []
    remaining = words
    number = 1
    while remaining > 0:
        length = min(remaining, rng.randint(8, 18))
        body = [rng.choice(WORDS) if i % 6 != 5 else rng.choice(_CONNECTORS)
                for i in range(length)]
        sentences.append(f"{label} {number}: {' '.join(body).capitalize()}.")
        remaining -= length
        number += 1
    return " ".join(sentences)


def make_tenant(seed: int, index: int, system_prompt_words: int,
                taken: frozenset[str] = frozenset()) -> Tenant:
    rng = random.Random(f"tenant:{seed}:{index}")
    company = company_name(rng)
    # A distinct first word (not only a distinct name) makes prompts differ from
    # their first word on, so no two tenants share a first block.
    while company.split()[0] in taken:
        company = company_name(rng)
    prompt = (f"{company} customer assistant handbook. You answer customers of {company} "
              f"and follow these rules. " + policy_text(rng, system_prompt_words))
    return Tenant(name=f"t{index:02d}", company=company, system_prompt=prompt)


def make_tenants(spec: WorkloadSpec) -> list[Tenant]:
    tenants: list[Tenant] = []
    taken: set[str] = set()  # first words of the companies so far
    for index in range(spec.tenants):
        tenant = make_tenant(spec.seed, index, spec.system_prompt_words, frozenset(taken))
        taken.add(tenant.company.split()[0])
        tenants.append(tenant)
    return tenants


def question(rng: random.Random, number: int) -> str:
    """A short user question, distinct for each ``number``."""
    return (f"Request {number}: how do I {rng.choice(_QUESTION_VERBS)} my "
            f"{rng.choice(_QUESTION_NOUNS)} {rng.choice(_CONNECTORS)} the "
            f"{rng.choice(WORDS)} {rng.choice(WORDS)} is {rng.choice(WORDS)}?")


def arrival_times(count: int, rate_rps: float | None, seed: int) -> list[float]:
    """Poisson arrivals (exponential gaps) starting at t=0; all zero without a rate."""
    if rate_rps is None:
        return [0.0] * count
    rng = random.Random(f"arrivals:{seed}")
    gaps = [0.0] + [rng.expovariate(rate_rps) for _ in range(count - 1)] if count else []
    return [round(t, 6) for t in accumulate(gaps)]


def generate(spec: WorkloadSpec) -> list[TraceRequest]:
    """The workload's requests, in arrival order."""
    return list(iter_requests(spec))


def iter_requests(spec: WorkloadSpec,
                  tenants: Sequence[Tenant] | None = None) -> Iterator[TraceRequest]:
    """``generate`` one request at a time, for runs too long to hold in memory.

    The tenants, picks and arrival times are built up front (O(tenants + requests)
    small values); each request's messages are made when it is reached. Passing
    ``make_tenants(spec)`` as ``tenants`` saves rebuilding them for another pass.
    """
    if tenants is None:
        tenants = make_tenants(spec)
    picks = (shuffled_tenants(len(tenants), spec.per_tenant, spec.seed)
             if spec.per_tenant is not None
             else pick_tenants(len(tenants), spec.requests, spec.zipf_s, spec.seed))
    questions = random.Random(f"questions:{spec.seed}")
    times = arrival_times(spec.requests, spec.rate_rps, spec.seed)
    for number, (rank, t) in enumerate(zip(picks, times)):
        tenant = tenants[rank]
        yield TraceRequest(
            t=t,
            tenant=tenant.name,
            max_tokens=spec.max_tokens,
            messages=(
                {"role": "system", "content": tenant.system_prompt},
                {"role": "user", "content": question(questions, number)},
            ),
        )


def pick_tenants(tenants: int, requests: int, s: float, seed: int) -> Sequence[int]:
    """Tenant ranks of ``requests`` requests, Zipf(s)-distributed."""
    rng = random.Random(f"tenant-picks:{seed}")
    return rng.choices(range(tenants), weights=zipf_weights(tenants, s), k=requests)


def shuffled_tenants(tenants: int, per_tenant: int, seed: int) -> Sequence[int]:
    """Tenant ranks of ``tenants x per_tenant`` requests, each tenant exactly
    ``per_tenant`` times, in a seeded random order."""
    picks = [rank for rank in range(tenants) for _ in range(per_tenant)]
    random.Random(f"tenant-picks:{seed}").shuffle(picks)
    return picks
