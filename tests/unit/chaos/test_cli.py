"""`cacheroute drill` argument errors: one line on stderr, exit status 2, nothing started."""

from __future__ import annotations

import pytest

from serving.cli import main


@pytest.mark.parametrize(("argv", "needle"), [
    (["drill"], "required"),
    (["drill", "unplug"], "invalid choice"),
    (["drill", "kill-replica", "--url", "http://10.1.2.3:8000"], "loopback"),
    (["drill", "kill-replica", "--url", "127.0.0.1:8000"], "--url must look like"),
    (["drill", "kill-replica", "--ray-address", "127.0.0.1:6379"], "goes with --url"),
    (["drill", "scale-down", "--replicas", "1"], "scale-down needs"),
    (["drill", "kill-replica", "--replicas", "0"], "--replicas"),
    (["drill", "kill-replica", "--max-requests", "0"], "max_requests"),
    (["drill", "kill-replica", "--concurrency", "-1"], "concurrency"),
    (["drill", "kill-replica", "--fault-at-s", "500", "--max-duration-s", "100"], "fault_at_s"),
    (["drill", "hang-replica", "--url", "http://127.0.0.1:8000", "--hang-s", "0"], "hang_s"),
    (["drill", "kill-replica", "--target", "gpu"], "invalid choice"),
    (["drill", "kill-replica", "--after-window-s", "0"], "after-window-s"),
    (["drill", "kill-replica", "--seed", "x"], "invalid int"),
])
def test_bad_arguments_exit_2_with_one_line(argv, needle, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cacheroute drill: error: ")
    assert needle in err


def test_help_lists_every_drill(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["drill", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("kill-replica", "hang-replica", "crash-mid-stream", "restart-ingress",
                 "scale-down", "scale-up"):
        assert name in out
