"""The master's pure decisions: restart backoff and how a child's end is reported."""

from __future__ import annotations

import os
import signal

from pylb.supervisor import BACKOFF_MAX, BACKOFF_MIN, STABLE_AFTER, describe_status, next_backoff


def test_backoff_doubles_to_the_cap_and_resets_after_a_stable_run():
    delays = []
    d = 0.0
    for _ in range(10):
        d = next_backoff(d, ran_for=0.5)
        delays.append(d)
    assert delays[:4] == [BACKOFF_MIN, 0.2, 0.4, 0.8]
    assert max(delays) == BACKOFF_MAX
    assert delays[-1] == BACKOFF_MAX
    assert next_backoff(BACKOFF_MAX, ran_for=STABLE_AFTER) == BACKOFF_MIN


def test_describe_status():
    # wait statuses as os.waitpid returns them
    assert describe_status(1 << 8) == "exited with code 1"
    assert describe_status(0) == "exited with code 0"
    assert describe_status(signal.SIGKILL) == "was killed by signal 9 (SIGKILL)"
    assert os.waitstatus_to_exitcode(signal.SIGKILL) == -9


def test_fds_needed_counts_both_sides_of_each_session():
    from pylb.config.model import Address, Config, GlobalConf, Listen, ServerConf
    from pylb.supervisor import fds_needed

    lst = Listen(
        name="web",
        binds=(Address("127.0.0.1", 80), Address("127.0.0.1", 81)),
        servers=(ServerConf(name="a", address=Address("127.0.0.1", 8080)),),
    )
    config = Config(global_=GlobalConf(maxconn=1000), listens=(lst,))
    assert fds_needed(config) == 2 * 1000 + 2 + 64
