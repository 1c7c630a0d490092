from bench.replica_load import load_skew


def test_even_load_is_one() -> None:
    assert load_skew({"a": 1, "b": 1}, {"a": 11, "b": 11}, 2) == 1.0


def test_skew_is_max_over_mean_of_the_deltas() -> None:
    assert load_skew({"a": 1, "b": 1}, {"a": 16, "b": 6}, 2) == 15 / 10


def test_replica_missing_from_metrics_counts_as_idle() -> None:
    assert load_skew({}, {"a": 10}, 2) == 2.0
    assert load_skew({"a": 3}, {"a": 3}, 2) is None
