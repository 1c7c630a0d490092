"""`python -m serving.models`: build the default model offline, from the command line.

Progress goes to stderr and the built path is the last line of stdout, so scripts
can capture it; errors are one line on stderr and exit status 2::

    python -m serving.models default [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from serving.models.default import ensure_default_model


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit status 2, like build errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _progress_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _OneLineParser(prog="python -m serving.models", description="Build model folders offline.")
    # A subcommand per model source; the default model is the one built offline.
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    p_default = sub.add_parser("default", help="build (or find) the default SmolLM2-135M-Instruct model")
    p_default.add_argument("--cache-dir", type=Path, default=None, help="default: $CACHEROUTE_CACHE_DIR or ~/.cache/cacheroute")
    args = parser.parse_args(argv)

    try:
        path = ensure_default_model(args.cache_dir, progress=_progress_to_stderr)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the CLI promises one line, not a traceback
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
