"""Argument types shared by the benchmark command lines (`bench`, `sim`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence


def policy_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type for `--policies a,b,c`, restricted to ``choices``."""

    def parse(text: str) -> list[str]:
        names = [p.strip() for p in text.split(",") if p.strip()]
        bad = [p for p in names if p not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"unknown policy {', '.join(bad) or '(none)'}; choose from {', '.join(choices)}")
        return names

    return parse
