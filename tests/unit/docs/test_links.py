"""The docs' relative links resolve, and point at files rather than at other files'
headings (a renamed heading must not break a link)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PAGES = sorted([REPO / "README.md", REPO / "CONTRIBUTING.md",
                *(REPO / "docs").rglob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z]+:|^#", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_name_existing_files(page: Path) -> None:
    missing = [t for t in relative_links(page)
               if not (page.parent / t.partition("#")[0]).exists()]
    assert not missing, f"{page.relative_to(REPO)} links to missing files: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_to_other_pages_name_no_heading(page: Path) -> None:
    anchored = [t for t in relative_links(page) if "#" in t]
    assert not anchored, f"{page.relative_to(REPO)} links to headings: {anchored}"
