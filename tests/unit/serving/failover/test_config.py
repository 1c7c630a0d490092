"""The `failover` section."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.serving.config_factories import config_error, load_text


def test_failover_fields_are_read(tmp_path: Path) -> None:
    config = load_text(tmp_path, "failover: {max_attempts: 5, prewarm_on_scale_up: true}")
    assert (config.failover.max_attempts, config.failover.prewarm_on_scale_up) == (5, True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("failover: {backoff_s: 3, max_backoff_s: 2}",
         "failover: Value error, backoff_s must not exceed max_backoff_s"),
        ("failover: {max_attempts: 0}",
         "failover.max_attempts: Input should be greater than or equal to 1"),
        ("failover: {progress_timeout_s: .nan}",
         "failover.progress_timeout_s: Input should be a finite number"),
    ],
)
def test_invalid_failover_is_one_line_naming_field(tmp_path: Path, text: str,
                                                   expected: str) -> None:
    assert expected in config_error(tmp_path, text)
