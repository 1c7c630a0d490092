"""The seeded chat that ``kvbench`` holds: a system prompt and N user turns.

Plain data, no model or tokenizer: the transformers runs (``kv_generate``) and the
service runs (``kvbench_service``) take the same ``Conversation`` so that both
measure one dialogue. The assistant's replies are not part of it; each run appends
the replies its model generated.

Turns are drawn without replacement from a fixed pool of questions by a seeded
``random.Random`` (so the order differs per seed, and no turn repeats within the
pool's size); beyond the pool they are numbered repeats, which still add new
tokens. Cost: O(turns).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Seed of the conversation. Changing it changes every user turn, so the numbers in
# docs/benchmarks/notes/2026-12-07-measurements-to-date.md no longer come from the same prompts.
KVBENCH_SEED = 0

SYSTEM_PROMPT = (
    "You are a patient assistant for a small community garden. Answer in plain words, "
    "give concrete quantities and times when you can, and keep each answer short."
)

# Questions of about 15-30 tokens each, so ten turns plus replies stay near 1k tokens.
_QUESTIONS = (
    "Which vegetables grow well in a shady corner that gets three hours of sun a day?",
    "How often should I water tomato plants in July when it is very hot and dry?",
    "What is a simple way to start a compost heap from kitchen scraps and leaves?",
    "How deep should I plant garlic cloves in autumn, and how far apart?",
    "My lettuce keeps bolting in early summer. What can I do about it?",
    "Which flowers attract bees and also look good next to a vegetable bed?",
    "How do I protect young seedlings from slugs without using chemicals?",
    "When is the best time of year to prune an old apple tree?",
    "How can I tell whether my soil is too acidic for growing beans?",
    "What should I sow in late August for a harvest before the first frost?",
    "How do I build a raised bed that lasts, and what wood should I avoid?",
    "Why are the lower leaves of my cucumber plants turning yellow?",
    "How much space does a single courgette plant really need?",
    "Can I grow potatoes in large bags on a balcony, and how many per bag?",
    "What is the easiest way to save seeds from this year's runner beans?",
    "How do I keep birds off the strawberries without hurting them?",
    "Which herbs can share one pot, and which ones should be kept apart?",
    "How should I store carrots and beetroot through the winter?",
    "What does crop rotation mean for a garden with only four beds?",
    "How do I get rid of bindweed that keeps coming back every spring?",
)


@dataclass(frozen=True, kw_only=True)
class Conversation:
    system: str
    user_turns: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.user_turns:
            raise ValueError("a conversation needs at least one user turn")


def make_conversation(turns: int, *, seed: int = KVBENCH_SEED) -> Conversation:
    """``turns`` user messages after ``SYSTEM_PROMPT``; the same for the same seed."""
    if turns < 1:
        raise ValueError(f"turns must be >= 1, got {turns}")
    rng = random.Random(seed)
    picked: list[str] = []
    while len(picked) < turns:
        round_no = len(picked) // len(_QUESTIONS)
        order = rng.sample(_QUESTIONS, len(_QUESTIONS))
        for question in order[:turns - len(picked)]:
            picked.append(question if round_no == 0
                          else f"Coming back to an earlier point ({round_no + 1}): {question}")
    return Conversation(system=SYSTEM_PROMPT, user_turns=tuple(picked))
