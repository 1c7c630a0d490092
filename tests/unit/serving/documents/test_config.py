"""The `documents` section."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.serving.config_factories import config_error, load_text


def test_document_fields_are_read(tmp_path: Path) -> None:
    config = load_text(tmp_path, "documents: {chunk_tokens: 100, chunk_overlap_tokens: 10}")
    assert (config.documents.chunk_tokens, config.documents.chunk_overlap_tokens) == (100, 10)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("documents: {chunk_tokens: 32, chunk_overlap_tokens: 32}",
         "documents: Value error, chunk_overlap_tokens must be below chunk_tokens"),
        ("documents: {top_k: 0}", "documents.top_k: Input should be greater than or equal to 1"),
    ],
)
def test_invalid_documents_is_one_line_naming_field(tmp_path: Path, text: str,
                                                    expected: str) -> None:
    assert expected in config_error(tmp_path, text)
