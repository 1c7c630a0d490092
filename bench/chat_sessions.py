"""Seeded multi-turn chat sessions: each turn resends the whole conversation so far.

Model of the load: ``S`` conversations with one assistant product (one shared
system prompt of about 300 tokens). Turn ``k`` of a session sends the system
prompt, the session's first ``k`` user messages with the assistant's replies to
them, and a new user message, so a session's prompt grows by about a user message
and a reply (about 210 tokens) a turn: 312 tokens at turn 1, about 1.8k at turn
8 (measured, seed 0). The cache a router can exploit is the
session's own history: turn ``k``'s prompt is a prefix of turn ``k + 1``'s, and it
sits on whichever replica served turn ``k``. Sessions share only the system prompt.

Assistant replies are fixed synthetic text in the trace, not the live model's
answers. That keeps the trace deterministic (every policy sees byte-identical
prompts, and the oracle can be computed before the run) at one cost: the engine
cached turn ``k``'s prompt and its *own* generated reply, and turn ``k + 1``
carries the synthetic reply instead, so only turn ``k``'s prompt (up to its last
full block) can hit. Real chat clients resend the live reply, which would also
hit on the reply's blocks; the difference is at most the reply's length per turn
and it is the same for every policy.

Timing: sessions start as Poisson arrivals at ``rate_rps / turns`` (so requests
arrive at about ``rate_rps`` overall), and the gap between a session's turns is
``think_s`` x U(0.5, 1.5) -- a user reading the answer and typing. The gap keeps a
turn from being sent before the previous one has normally finished; the replay
does not wait for it (open loop). About ``rate_rps x think_s`` sessions are active
at once. Without a rate the times are computed at 1 request/s and only their
order is used (fixed-concurrency replay ignores ``t``).

Each request carries its session id in ``session`` (sent as the ``user`` field
and the ``x-session-id`` header: ``replay.py``). Determinism as in
``workloads.py``: one string-seeded ``random.Random`` per purpose and session.
Cost: O(sessions x turns^2) words, the resent history.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bench.trace import TraceRequest
from bench.workloads import WORDS, arrival_times, company_name, numbered_text

_TOPICS = ("a delayed shipment", "a duplicate charge", "a locked account", "a contract renewal",
           "a warranty claim", "an address change", "a missing refund", "a plan upgrade",
           "a lost password", "an invoice dispute", "a damaged delivery", "a booking change")

# Nominal request rate used only to order turns when no rate is given.
_ORDER_ONLY_RATE_RPS = 1.0


@dataclass(frozen=True, kw_only=True)
class SessionSpec:
    sessions: int = 16
    turns: int = 6
    seed: int = 0
    # Overall request arrival rate; None: times only order the trace (see module doc).
    rate_rps: float | None = None
    # Mean gap between two turns of one session (seconds).
    think_s: float = 10.0
    system_prompt_words: int = 160
    user_words: int = 30
    # About 150 SmolLM2 tokens: one reply adds about one 128-token block to the history.
    reply_words: int = 110
    max_tokens: int = 8

    def __post_init__(self) -> None:
        for name in ("sessions", "turns", "system_prompt_words", "user_words", "reply_words",
                     "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.rate_rps is not None and not self.rate_rps > 0:
            raise ValueError(f"rate_rps must be > 0, got {self.rate_rps}")
        if not self.think_s >= 0:
            raise ValueError(f"think_s must be >= 0, got {self.think_s}")

    @property
    def requests(self) -> int:
        return self.sessions * self.turns


def system_prompt(spec: SessionSpec) -> str:
    rng = random.Random(f"session-system:{spec.seed}")
    company = company_name(rng)
    return (f"{company} chat assistant. You help customers of {company} over a "
            f"conversation and follow these rules. "
            + numbered_text(rng, spec.system_prompt_words, label="Rule"))


def user_message(rng: random.Random, session: int, turn: int, words: int) -> str:
    topic = _TOPICS[session % len(_TOPICS)]
    body = " ".join(rng.choice(WORDS) for _ in range(words))
    return f"Customer {session} message {turn + 1} about {topic}: {body}?"


def session_id(seed: int, session: int) -> str:
    return f"session-{seed}-{session:03d}"


def generate(spec: SessionSpec) -> list[TraceRequest]:
    """Every turn of every session, in arrival order (ties: session, then turn)."""
    system = {"role": "system", "content": system_prompt(spec)}
    starts = arrival_times(spec.sessions, (spec.rate_rps or _ORDER_ONLY_RATE_RPS) / spec.turns,
                           spec.seed)
    timed: list[tuple[float, int, int, TraceRequest]] = []
    for index, start in enumerate(starts):
        rng = random.Random(f"session:{spec.seed}:{index}")
        sid = session_id(spec.seed, index)
        history: list[dict[str, str]] = [system]
        t = start
        for turn in range(spec.turns):
            if turn:
                t += spec.think_s * rng.uniform(0.5, 1.5)
            history.append({"role": "user",
                            "content": user_message(rng, index, turn, spec.user_words)})
            timed.append((round(t, 6), index, turn, TraceRequest(
                t=round(t, 6), session=sid, tenant=sid, max_tokens=spec.max_tokens,
                messages=tuple(dict(m) for m in history))))
            history.append({"role": "assistant",
                            "content": numbered_text(rng, spec.reply_words, label="Step")})
    timed.sort(key=lambda item: item[:3])
    return [request for *_, request in timed]
