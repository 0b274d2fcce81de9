"""Pure parts of the Galera checks: the verdict on a node's state, parsing of its SHOW
output, the greeting classification and the password file."""

from __future__ import annotations

import dataclasses
import os

import pytest

from pylb.health.galera import (
    GaleraCheckResult,
    GaleraNode,
    SecretError,
    judge,
    judge_greeting,
    read_secret,
)
from pylb.health.types import CheckResult, CheckStatus

SYNCED = GaleraNode(
    node_name="db1",
    cluster_state_uuid="33186048-e995-11f1-ade8-f6a13741a5f7",
    last_committed=10,
    local_index=0,
    local_state=4,
    local_state_comment="Synced",
    cluster_status="Primary",
    cluster_size=3,
    ready=True,
    connected=True,
)


def with_(**kw: object) -> GaleraNode:
    return dataclasses.replace(SYNCED, **kw)


def test_synced_primary_node_is_a_writer() -> None:
    assert judge(SYNCED) == (CheckStatus.L7OK, "wsrep_local_state=4 Synced")


@pytest.mark.parametrize(
    ("node", "reason"),
    [
        (with_(connected=False), "wsrep_connected=OFF"),
        (with_(cluster_status="non-Primary", ready=False), "wsrep_cluster_status=non-Primary"),
        (with_(cluster_status=""), "wsrep_cluster_status=?"),
        (with_(ready=False), "wsrep_ready=OFF"),
        (with_(local_state=1, local_state_comment="Joining"), "wsrep_local_state=1 Joining"),
        (with_(local_state=3, local_state_comment=""), "wsrep_local_state=3 Joined"),
        (
            with_(local_state=2, local_state_comment="Donor/Desynced"),
            "wsrep_local_state=2 Donor/Desynced",
        ),
        (with_(local_state=None), "wsrep_local_state=?"),
        (with_(reject_queries="ALL"), "wsrep_reject_queries=ALL"),
        (with_(read_only=True), "read_only=ON"),
        (with_(wsrep_on=False), "wsrep_on=OFF (not a Galera node)"),
    ],
)
def test_unusable_states_are_named(node: GaleraNode, reason: str) -> None:
    assert judge(node) == (CheckStatus.L7STS, reason)


def test_donor_allowed_only_when_configured_and_not_desynced_by_hand() -> None:
    donor = with_(local_state=2, local_state_comment="Donor/Desynced")
    status, info = judge(donor, available_when_donor=True)
    assert status is CheckStatus.L7OKC and status.passed
    assert info == "wsrep_local_state=2 Donor/Desynced (available_when_donor)"
    status, info = judge(dataclasses.replace(donor, desync=True), available_when_donor=True)
    assert status is CheckStatus.L7STS
    assert info == "wsrep_desync=ON (wsrep_local_state=2 Donor/Desynced)"


def test_read_only_allowed_when_configured() -> None:
    status, info = judge(with_(read_only=True), available_when_readonly=True)
    assert status is CheckStatus.L7OKC
    assert info == "read_only=ON (available_when_readonly)"
    # Membership problems still win over an allowed read_only.
    assert judge(with_(read_only=True, ready=False), available_when_readonly=True)[0] is (
        CheckStatus.L7STS
    )


def test_from_rows_parses_strictly() -> None:
    node = GaleraNode.from_rows(
        {
            "wsrep_ready": "ON",
            "wsrep_connected": "ON",
            "wsrep_cluster_status": "Primary",
            "wsrep_local_state": "4",
            "wsrep_local_state_comment": "Synced",
            "wsrep_local_index": "2",
            "wsrep_cluster_state_uuid": "u",
            "wsrep_last_committed": "1_0",  # never int("1_0")
            "wsrep_cluster_size": "+3",
        },
        {
            "read_only": "OFF",
            "wsrep_desync": "OFF",
            "wsrep_reject_queries": "NONE",
            "wsrep_node_name": "node2",
            "wsrep_on": "ON",
        },
    )
    assert node.local_index == 2 and node.local_state == 4
    assert node.last_committed is None and node.cluster_size is None
    assert node.node_name == "node2" and node.ready and node.connected
    assert judge(node)[0] is CheckStatus.L7OK
    # Non-ASCII digits are not numbers on the wire.
    assert GaleraNode.from_rows({"wsrep_local_state": "٤"}, {}).local_state is None


def test_result_is_a_check_result() -> None:
    r = GaleraCheckResult(CheckStatus.L7STS, False, None, "read_only=ON", 0.002, SYNCED)
    assert isinstance(r, CheckResult)
    assert r.reason() == 'reason: Layer7 wrong status, info: "read_only=ON", check duration: 2ms'
    assert r.node is SYNCED


def test_greeting_v10() -> None:
    payload = b"\x0a5.5.5-10.11.19-MariaDB\x00" + b"\x01\x00\x00\x00" + b"x" * 20
    assert judge_greeting(payload) == (CheckStatus.L6OK, "10.11.19-MariaDB")


def test_greeting_error_packet() -> None:
    payload = b"\xff" + (1040).to_bytes(2, "little") + b"Too many connections"
    status, info = judge_greeting(payload)
    assert status is CheckStatus.L7STS
    assert info.startswith("1040 ") and "Too many connections" in info


def test_greeting_other_protocol() -> None:
    assert judge_greeting(b"\x09old\x00")[0] is CheckStatus.L7RSP
    assert judge_greeting(b"")[0] is CheckStatus.L7RSP


def test_read_secret(tmp_path) -> None:
    p = tmp_path / "pw"
    p.write_bytes(b"s3cret \n")
    assert read_secret(p) == "s3cret "  # one newline off, the rest kept
    p.write_bytes(b"a\r\n")
    assert read_secret(p) == "a"
    p.write_bytes(b"a\n\n")
    assert read_secret(p) == "a\n"
    with pytest.raises(SecretError, match="no such file"):
        read_secret(tmp_path / "missing")
    with pytest.raises(SecretError, match="is a directory"):
        read_secret(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_read_secret_unreadable(tmp_path) -> None:
    p = tmp_path / "pw"
    p.write_text("x")
    p.chmod(0)
    with pytest.raises(SecretError, match="permission denied"):
        read_secret(p)
