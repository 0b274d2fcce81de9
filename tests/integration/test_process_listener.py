"""Listening sockets as the master binds them (pylb.proxy.listener)."""

from __future__ import annotations

import socket

import pytest

from pylb.config.model import Address, Config, GlobalConf, Listen, ServerConf
from pylb.proxy.listener import IP_FREEBIND, ListenerSet, backlog_for, bind_socket


def _config(binds: list[Address], workers: int = 1) -> Config:
    server = ServerConf(name="s1", address=Address("127.0.0.1", 9))
    return Config(
        global_=GlobalConf(workers=workers),
        listens=(Listen(name="web", binds=tuple(binds), servers=(server,), mode="tcp"),),
    )


def test_bind_loopback_port_zero_accepts():
    sock = bind_socket(Address("127.0.0.1", 0), backlog=16)
    try:
        port = sock.getsockname()[1]
        assert port > 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        assert sock.getblocking() is False
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            sock.setblocking(True)
            conn, _ = sock.accept()
            conn.close()
    finally:
        sock.close()


def test_bind_non_local_address_with_freebind():
    """A VIP this node does not hold (a documentation address): bind works, no sysctl.
    No traffic is sent there."""
    sock = bind_socket(Address("192.0.2.100", 0), backlog=16)
    try:
        assert sock.getsockopt(socket.SOL_IP, IP_FREEBIND) == 1
        assert sock.getsockname()[0] == "192.0.2.100"
    finally:
        sock.close()


def test_bind_all_ipv4_star():
    sock = bind_socket(Address("*", 0), backlog=16)
    try:
        assert sock.getsockname()[0] == "0.0.0.0"
    finally:
        sock.close()


def test_bind_ipv6_is_v6only():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sock = bind_socket(Address("::1", 0), backlog=16)
    except OSError as e:
        pytest.skip(f"no IPv6 loopback: {e}")
    try:
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        sock.close()


def test_bind_busy_port_names_the_address():
    first = bind_socket(Address("127.0.0.1", 0), backlog=16, reuseport=False)
    try:
        port = first.getsockname()[1]
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            bind_socket(Address("127.0.0.1", port), backlog=16, reuseport=False)
    finally:
        first.close()


def test_backlog_is_capped_by_maxconn():
    assert backlog_for(10) == 10
    assert backlog_for(10**9) <= 10**9
    assert backlog_for(None) >= 1


def test_listener_set_slots_share_the_port_and_sync_keeps_sockets():
    ls = ListenerSet()
    try:
        ls.sync(_config([Address("127.0.0.1", 0)], workers=2))
        s0 = ls.for_slot(0)["web"][0]
        s1 = ls.for_slot(1)["web"][0]
        assert s0 is not s1
        assert s0.getsockname() == s1.getsockname()  # SO_REUSEPORT group, one per worker
        # a config with the same address keeps the very same sockets (reload seam)
        ls.sync(_config([Address("127.0.0.1", 0)], workers=2))
        assert ls.for_slot(0)["web"][0] is s0
        # dropping to one worker closes slot 1's socket
        ls.sync(_config([Address("127.0.0.1", 0)], workers=1))
        assert ls.for_slot(0)["web"][0] is s0
        assert s1.fileno() == -1
    finally:
        ls.close()
    assert s0.fileno() == -1
