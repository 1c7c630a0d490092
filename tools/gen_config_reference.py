#!/usr/bin/env python3
"""Write docs/configuration.md, the reference of every config field, from the config
classes' field descriptions (serving.config.reference_markdown); with --check, exit 1
when the committed file differs. Part of `make generate`; `cacheroute config
--reference` prints the same text.

    .venv/bin/python tools/gen_config_reference.py
    .venv/bin/python tools/gen_config_reference.py --check
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serving.config import reference_markdown  # noqa: E402 -- after the path set-up above

REFERENCE_PATH = ROOT / "docs" / "configuration.md"


def main(argv: list[str]) -> int:
    text = reference_markdown()
    current = REFERENCE_PATH.read_text(encoding="utf-8") if REFERENCE_PATH.exists() else None
    if "--check" in argv:
        if current != text:
            print(f"{REFERENCE_PATH.relative_to(ROOT)} is stale: run `make generate`",
                  file=sys.stderr)
            return 1
        return 0
    if current != text:
        REFERENCE_PATH.write_text(text, encoding="utf-8")
        print(REFERENCE_PATH.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
