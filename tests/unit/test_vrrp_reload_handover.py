"""A reload that restarts the speaker: which instances may be handed over (pure), and the
FSM's resume start."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest

from pylb.supervisor import _handover_instances
from pylb.vrrp.fsm import VrrpFsm
from pylb.vrrp.types import (
    AddVips,
    InstanceConfig,
    Notify,
    NotifyKind,
    SendAdvert,
    SendGratuitous,
    Startup,
    State,
)

OLD: dict[str, Any] = {
    "instances": [
        {
            "name": "VI_1",
            "interface": "eth0",
            "vrid": 51,
            "priority": 150,
            "virtual_ipaddresses": ["192.0.2.100/24"],
        },
        {
            "name": "VI_2",
            "interface": "eth0",
            "vrid": 52,
            "priority": 100,
            "virtual_ipaddresses": ["192.0.2.101/24"],
        },
    ]
}


def changed(**kw: Any) -> dict[str, Any]:
    new = copy.deepcopy(OLD)
    new["instances"][0].update(kw)
    return new


@pytest.mark.parametrize(
    "new",
    [
        changed(priority=160),
        changed(advert_interval="2s", track={"proxy_weight": 30}),
    ],
)
def test_same_addresses_hand_over_every_instance(new: dict[str, Any]) -> None:
    assert _handover_instances(OLD, new) == ("VI_1", "VI_2")


def test_an_added_instance_does_not_prevent_the_handover() -> None:
    new = copy.deepcopy(OLD)
    new["instances"].append(
        {"name": "VI_3", "interface": "eth0", "vrid": 53, "virtual_ipaddresses": ["192.0.2.102"]}
    )
    assert _handover_instances(OLD, new) == ("VI_1", "VI_2")


@pytest.mark.parametrize(
    "new",
    [
        changed(virtual_ipaddresses=["192.0.2.100/24", "192.0.2.103/24"]),
        changed(virtual_ipaddresses=["192.0.2.100/25"]),
        changed(vrid=61),
        changed(interface="eth1"),
        {"instances": OLD["instances"][1:]},  # VI_1 removed: its VIP must go
        {"instances": [{**OLD["instances"][0], "name": "VI_X"}, OLD["instances"][1]]},
    ],
)
def test_moved_or_removed_addresses_get_the_clean_stop(new: dict[str, Any]) -> None:
    assert _handover_instances(OLD, new) is None


def test_nothing_to_hand_over_without_both_sections() -> None:
    assert _handover_instances(None, OLD) is None
    assert _handover_instances(OLD, None) is None
    assert _handover_instances({"instances": "bad"}, OLD) is None


def test_resume_starts_as_master_at_once() -> None:
    cfg = InstanceConfig(
        name="VI_1",
        interface="eth0",
        vrid=51,
        virtual_ipaddresses=(ipaddress.ip_interface("192.0.2.100/24"),),
        priority=150,
    )
    m = VrrpFsm(cfg, ipaddress.ip_address("192.0.2.10"))
    acts = m.step(Startup(resume=True), 0.0)
    assert m.state is State.MASTER
    assert acts[:3] == [SendAdvert(150), AddVips(), SendGratuitous()]
    assert Notify(NotifyKind.MASTER, 150) in acts
    plain = VrrpFsm(cfg, ipaddress.ip_address("192.0.2.10"))
    plain.step(Startup(), 0.0)
    assert plain.state is State.BACKUP
