"""VRRP codec and validation: round trips, an independent checksum, every verdict."""

from __future__ import annotations

import ipaddress
import logging
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.vrrp import VRRPv3

from pylb.vrrp.packet import (
    AUTH_NONE,
    AUTH_PASS,
    Advert,
    PacketError,
    Verdict,
    advert_for,
    decode,
    encode,
    receive,
    validate,
)
from pylb.vrrp.stats import DropStats
from pylb.vrrp.types import AdvertReceived, AuthConf, Family, InstanceConfig, UnicastConf

ip = ipaddress.ip_address
SRC4, PEER4, GROUP4 = ip("192.0.2.1"), ip("192.0.2.2"), ip("224.0.0.18")
SRC6, GROUP6 = ip("fe80::1"), ip("ff02::12")
VIPS4 = (ipaddress.ip_interface("192.0.2.100/24"), ipaddress.ip_interface("192.0.2.101/24"))
VIPS6 = (ipaddress.ip_interface("2001:db8::100/64"),)


def cfg4(**kw: object) -> InstanceConfig:
    base: dict[str, object] = dict(
        name="VI_1", interface="eth0", vrid=51, virtual_ipaddresses=VIPS4, version=2
    )
    base.update(kw)
    return InstanceConfig(**base)  # type: ignore[arg-type]


V2_PASS = cfg4(auth=AuthConf("secret12"))
V3_4 = cfg4(version=3, advert_interval=0.1)
V3_6 = cfg4(version=3, virtual_ipaddresses=VIPS6)


# ---------------------------------------------------- an independent RFC 1071 checksum


def rfc1071(data: bytes) -> int:
    """Written from RFC 1071 §4.1 ("C" example), byte by byte, sharing no code."""
    s = 0
    for i in range(0, len(data) - 1, 2):
        s += (data[i] << 8) | data[i + 1]
    if len(data) % 2:
        s += data[-1] << 8
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def expected_v3_checksum(msg: bytes, src, dst) -> int:
    zeroed = msg[:6] + b"\x00\x00" + msg[8:]
    if src.version == 4:  # RFC 5798 §5.2.8 + RFC 768-style IPv4 pseudo-header
        ph = src.packed + dst.packed + bytes([0, 112]) + len(zeroed).to_bytes(2, "big")
    else:  # RFC 8200 §8.1
        ph = src.packed + dst.packed + len(zeroed).to_bytes(4, "big") + bytes([0, 0, 0, 112])
    return rfc1071(ph + zeroed)


def ip4(payload: bytes, src=SRC4, dst=GROUP4, ttl: int = 255, proto: int = 112) -> bytes:
    """A received IPv4 packet as a raw socket returns it (header checksum not checked)."""
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(payload), 0, 0, ttl, proto, 0, src.packed, dst.packed
    )
    return hdr + payload


def ip6(payload: bytes, src=SRC6, dst=GROUP6, hlim: int = 255) -> bytes:
    hdr = struct.pack("!IHBB", 6 << 28, len(payload), 112, hlim) + src.packed + dst.packed
    return hdr + payload


# ------------------------------------------------------------------ round trips


def test_v2_pass_round_trip() -> None:
    a = advert_for(V2_PASS, 110)
    msg = encode(a, src=SRC4)
    assert len(msg) == 8 + 2 * 4 + 8
    assert msg[0] == 0x21 and msg[1] == 51 and msg[2] == 110 and msg[3] == 2
    assert msg[4] == AUTH_PASS and msg[5] == 1  # one second
    assert msg[-8:] == b"secret12"
    assert rfc1071(msg) == 0  # v2: the message alone sums to zero
    got = decode(ip4(msg), Family.V4)
    assert (got.version, got.vrid, got.priority, got.max_adver_int) == (2, 51, 110, 1.0)
    assert got.addresses == V2_PASS.addresses
    assert (got.src, got.dst, got.ttl, got.checksum_ok) == (SRC4, GROUP4, 255, True)
    assert validate(got, V2_PASS) is Verdict.OK
    assert got.event() == AdvertReceived(110, SRC4, 1.0)


def test_v2_no_auth_round_trip() -> None:
    c = cfg4()
    msg = encode(advert_for(c, 100), src=SRC4)
    assert msg[4] == AUTH_NONE and msg[-8:] == bytes(8)
    assert validate(decode(ip4(msg), 4), c) is Verdict.OK


def test_v3_ipv4_round_trip_centiseconds() -> None:
    msg = encode(advert_for(V3_4, 200), src=SRC4)
    assert len(msg) == 8 + 2 * 4
    assert msg[0] == 0x31 and int.from_bytes(msg[4:6], "big") == 10  # 10 cs
    got = decode(ip4(msg), Family.V4)
    assert got.max_adver_int == 0.1 and got.priority == 200
    assert validate(got, V3_4) is Verdict.OK


def test_v3_ipv6_round_trip_whole_packet_and_payload() -> None:
    msg = encode(advert_for(V3_6, 100), src=SRC6)
    assert len(msg) == 8 + 16
    whole = decode(ip6(msg), Family.V6)
    bare = decode(msg, Family.V6, src=SRC6, dst=GROUP6, hop_limit=255)
    assert whole == bare
    assert whole.addresses == (ip("2001:db8::100"),) and whole.checksum_ok
    assert validate(whole, V3_6) is Verdict.OK


def test_unicast_checksum_uses_the_peer_address() -> None:
    c = cfg4(version=3, unicast=UnicastConf(SRC4, (PEER4,)))
    msg = encode(advert_for(c, 100), src=SRC4, dst=PEER4)
    assert decode(ip4(msg, dst=PEER4), 4).checksum_ok
    # The same bytes to another destination fail the checksum.
    assert not decode(ip4(msg, dst=GROUP4), 4).checksum_ok


def test_decode_hand_built_keepalived_layouts() -> None:
    """Bytes laid out as keepalived's vrrphdr_t, built with struct alone (no scapy)."""
    # v2: vers_type 0x21, vrid 51, prio 120, 2 addrs, auth PASS, 1 s, csum, addrs, pw.
    body = struct.pack("!BBBBBBH", 0x21, 51, 120, 2, 1, 1, 0)
    body += b"".join(a.ip.packed for a in VIPS4) + b"secret12"
    v2 = body[:6] + rfc1071(body).to_bytes(2, "big") + body[8:]
    verdict, adv = receive(ip4(v2, src=PEER4), 4, V2_PASS)
    assert verdict is Verdict.OK and adv is not None
    assert (adv.vrid, adv.priority, adv.src) == (51, 120, PEER4)
    # v3 / IPv4: rsvd+interval 12 bits = 10 cs, checksum over the pseudo-header too.
    body = struct.pack("!BBBBHH", 0x31, 51, 90, 2, 10, 0) + b"".join(a.ip.packed for a in VIPS4)
    v3 = body[:6] + expected_v3_checksum(body, PEER4, GROUP4).to_bytes(2, "big") + body[8:]
    verdict, adv = receive(ip4(v3, src=PEER4), 4, V3_4)
    assert verdict is Verdict.OK and adv is not None and adv.max_adver_int == 0.1
    # The same v3 bytes with a checksum over the message alone (no pseudo-header) fail.
    bad = body[:6] + rfc1071(body).to_bytes(2, "big") + body[8:]
    assert receive(ip4(bad, src=PEER4), 4, V3_4)[0] is Verdict.CHECKSUM


def test_both_ones_complement_zeros_are_valid() -> None:
    """A message whose checksum is 0 may carry 0xFFFF instead (RFC 1624 §3)."""
    body = struct.pack("!BBBBBBH", 0x21, 51, 100, 2, 0, 1, 0)
    body += b"".join(a.ip.packed for a in VIPS4) + bytes(6)
    last = 0xFFFF - (~rfc1071(body + b"\0\0") & 0xFFFF)  # makes the sum exactly 0xFFFF
    body += last.to_bytes(2, "big")
    assert rfc1071(body) == 0
    for field in (b"\x00\x00", b"\xff\xff"):
        pkt = ip4(body[:6] + field + body[8:], src=PEER4)
        assert receive(pkt, 4, cfg4())[0] is Verdict.OK


# ------------------------------------------------------------------ checksum rule


def test_scapy_v3_ipv4_checksum_is_the_rfc_pseudo_header_rule() -> None:
    # A fixed vector: 192.0.2.1 -> 224.0.0.18, vrid 5, prio 100, 100 cs, VIP 192.0.2.100.
    raw = bytes(
        IP(src="192.0.2.1", dst="224.0.0.18", ttl=255)
        / VRRPv3(vrid=5, priority=100, addrlist=["192.0.2.100"])
    )[20:]
    assert int.from_bytes(raw[6:8], "big") == expected_v3_checksum(raw, SRC4, GROUP4)
    # Without the pseudo-header the value would differ: the rule matters.
    assert int.from_bytes(raw[6:8], "big") != rfc1071(raw[:6] + b"\0\0" + raw[8:])


@settings(max_examples=150, deadline=None)
@given(
    vrid=st.integers(1, 255),
    prio=st.integers(0, 255),
    cs=st.integers(1, 4095),
    n=st.integers(1, 8),
    src=st.integers(1, 2**32 - 2),
    dst=st.integers(1, 2**32 - 2),
    v6=st.booleans(),
)
def test_scapy_v3_checksum_matches_independent(vrid, prio, cs, n, src, dst, v6) -> None:
    if v6:
        s, d = ipaddress.IPv6Address(src << 64 | 1), ipaddress.IPv6Address(dst << 32)
        addrs = [str(ipaddress.IPv6Address((0x20010DB8 << 96) + i)) for i in range(n)]
        raw = bytes(
            IPv6(src=str(s), dst=str(d), hlim=255)
            / VRRPv3(vrid=vrid, priority=prio, adv=cs, addrlist=addrs)
        )[40:]
    else:
        s, d = ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst)
        addrs = [str(ipaddress.IPv4Address(0xC0000200 + i)) for i in range(n)]
        raw = bytes(
            IP(src=str(s), dst=str(d), ttl=255)
            / VRRPv3(vrid=vrid, priority=prio, adv=cs, addrlist=addrs)
        )[20:]
    assert int.from_bytes(raw[6:8], "big") == expected_v3_checksum(raw, s, d)
    # encode() (scapy + our own check) produces exactly those bytes.
    a = Advert(3, vrid, prio, cs / 100, tuple(ip(x) for x in addrs))
    assert encode(a, src=s, dst=d) == raw


# ------------------------------------------------------------------ verdicts


def good_v2() -> bytes:
    return ip4(encode(advert_for(V2_PASS, 100), src=PEER4), src=PEER4)


def test_verdict_ttl_254_and_255() -> None:
    msg = encode(advert_for(V2_PASS, 100), src=PEER4)
    assert receive(ip4(msg, src=PEER4, ttl=254), 4, V2_PASS)[0] is Verdict.TTL
    assert receive(ip4(msg, src=PEER4, ttl=255), 4, V2_PASS)[0] is Verdict.OK
    # IPv6 hop limit, from the ancillary data.
    msg6 = encode(advert_for(V3_6, 100), src=SRC6)
    kw = dict(src=SRC6, dst=GROUP6)
    assert receive(msg6, 6, V3_6, hop_limit=254, **kw)[0] is Verdict.TTL
    assert receive(ip6(msg6, hlim=1), 6, V3_6)[0] is Verdict.TTL
    # keepalived does not check the TTL of unicast adverts (they may be routed).
    uc = cfg4(unicast=UnicastConf(SRC4, (PEER4,)), auth=AuthConf("secret12"))
    assert receive(ip4(msg, src=PEER4, dst=SRC4, ttl=64), 4, uc)[0] is Verdict.OK


@pytest.mark.parametrize("byte", [6, 7])
def test_verdict_checksum_flipped_byte(byte: int) -> None:
    pkt = bytearray(good_v2())
    pkt[20 + byte] ^= 0x01
    assert receive(bytes(pkt), 4, V2_PASS)[0] is Verdict.CHECKSUM


def test_verdict_checksum_v3_and_v6() -> None:
    pkt = bytearray(ip4(encode(advert_for(V3_4, 100), src=PEER4), src=PEER4))
    pkt[-1] ^= 0x80  # an address byte: the sum no longer matches
    assert receive(bytes(pkt), 4, V3_4)[0] is Verdict.CHECKSUM
    msg6 = bytearray(encode(advert_for(V3_6, 100), src=SRC6))
    msg6[2] ^= 0xFF
    assert receive(ip6(bytes(msg6)), 6, V3_6)[0] is Verdict.CHECKSUM


def test_verdict_auth_wrong_password_and_type() -> None:
    other = cfg4(auth=AuthConf("secret13"))
    pkt = ip4(encode(advert_for(other, 100), src=PEER4), src=PEER4)
    assert receive(pkt, 4, V2_PASS)[0] is Verdict.AUTH
    noauth = ip4(encode(advert_for(cfg4(), 100), src=PEER4), src=PEER4)
    assert receive(noauth, 4, V2_PASS)[0] is Verdict.AUTH
    assert receive(good_v2(), 4, cfg4())[0] is Verdict.AUTH


def test_verdict_wrong_vrid() -> None:
    assert receive(good_v2(), 4, cfg4(vrid=52, auth=AuthConf("secret12")))[0] is (
        Verdict.VRID_UNKNOWN
    )


def test_verdict_wrong_version() -> None:
    # A v2 advert to a v3 instance and a v3 advert to a v2 instance.
    assert receive(good_v2(), 4, cfg4(version=3))[0] is Verdict.VERSION
    v3 = ip4(encode(advert_for(V3_4, 100), src=PEER4), src=PEER4)
    assert receive(v3, 4, V2_PASS)[0] is Verdict.VERSION
    # A version this code does not speak.
    pkt = bytearray(good_v2())
    pkt[20] = 0x41
    assert receive(bytes(pkt), 4, V2_PASS)[0] is Verdict.VERSION


def test_verdict_interval_v2_only() -> None:
    slow = cfg4(auth=AuthConf("secret12"), advert_interval=2.0)
    assert receive(good_v2(), 4, slow)[0] is Verdict.INTERVAL
    # v3 learns the master's interval instead.
    v3 = ip4(encode(advert_for(V3_4, 100), src=PEER4), src=PEER4)
    assert receive(v3, 4, cfg4(version=3, advert_interval=1.0))[0] is Verdict.OK


def test_verdict_own_and_addr_mismatch() -> None:
    assert receive(good_v2(), 4, V2_PASS, own=frozenset({PEER4}))[0] is Verdict.OWN
    one_vip = cfg4(auth=AuthConf("secret12"), virtual_ipaddresses=VIPS4[:1])
    verdict, adv = receive(good_v2(), 4, one_vip)
    assert verdict is Verdict.ADDR_MISMATCH and verdict.accepted and adv is not None
    other = cfg4(
        auth=AuthConf("secret12"),
        virtual_ipaddresses=(VIPS4[0], ipaddress.ip_interface("192.0.2.102/24")),
    )
    assert receive(good_v2(), 4, other)[0] is Verdict.ADDR_MISMATCH
    # Same addresses in another order are the same list.
    swapped = cfg4(auth=AuthConf("secret12"), virtual_ipaddresses=VIPS4[::-1])
    assert receive(good_v2(), 4, swapped)[0] is Verdict.OK


@pytest.mark.parametrize(
    "mangle",
    [
        lambda p: p[:-1],  # truncated
        lambda p: ip4(p[20:] + b"\0\0\0\0", src=PEER4),  # longer than the count says
        lambda p: p[:20],  # no VRRP message at all
        lambda p: p[:2] + (999).to_bytes(2, "big") + p[4:],  # IP length past the data
        lambda p: p[:9] + b"\x06" + p[10:],  # not protocol 112
        lambda p: p[:20] + b"\x22" + p[21:],  # type 2
        lambda p: p[:23] + b"\x03" + p[24:],  # count 3, only 2 addresses
        lambda p: p[:6] + b"\x20\x00" + p[8:],  # a fragment
        lambda p: b"\x60" + p[1:],  # IPv6 version nibble on the IPv4 socket
    ],
)
def test_verdict_malformed(mangle) -> None:
    pkt = good_v2()
    assert receive(mangle(pkt), 4, V2_PASS) == (Verdict.MALFORMED, None)


def test_ipv4_options_are_skipped() -> None:
    msg = encode(advert_for(V2_PASS, 100), src=PEER4)
    plain = ip4(msg, src=PEER4)
    hdr = bytes([0x46]) + plain[1:2] + (24 + len(msg)).to_bytes(2, "big") + plain[4:20]
    verdict, adv = receive(hdr + b"\x01\x01\x01\x00" + msg, 4, V2_PASS)  # NOP NOP NOP EOL
    assert verdict is Verdict.OK and adv is not None and adv.src == PEER4


def test_ipv4_link_padding_is_ignored() -> None:
    assert receive(good_v2() + b"\0" * 6, 4, V2_PASS)[0] is Verdict.OK


def test_priority_zero_is_decoded() -> None:
    pkt = ip4(encode(advert_for(V2_PASS, 0), src=PEER4), src=PEER4)
    verdict, adv = receive(pkt, 4, V2_PASS)
    assert verdict is Verdict.OK and adv is not None and adv.priority == 0


# ------------------------------------------------------------------ hostile input


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=120), fam=st.sampled_from([4, 6]), bare=st.booleans())
def test_decode_arbitrary_bytes_only_raises_packet_error(data: bytes, fam: int, bare) -> None:
    kw = dict(src=SRC6, dst=GROUP6, hop_limit=255) if fam == 6 and bare else {}
    try:
        decode(data, fam, **kw)
    except PacketError as exc:
        assert exc.verdict in (Verdict.MALFORMED, Verdict.VERSION)
    v, _ = receive(data, fam, V2_PASS if fam == 4 else V3_6, **kw)
    assert isinstance(v, Verdict)


@settings(max_examples=400, deadline=None)
@given(
    base=st.sampled_from(["v2", "v3", "v6"]),
    flips=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 100),
)
def test_mutated_adverts_never_crash(base: str, flips, cut: int) -> None:
    """Start from valid packets so the fuzz reaches scapy, not only the length checks."""
    if base == "v2":
        pkt, fam, c = bytearray(good_v2()), 4, V2_PASS
    elif base == "v3":
        pkt, fam, c = bytearray(ip4(encode(advert_for(V3_4, 100), src=PEER4), src=PEER4)), 4, V3_4
    else:
        pkt, fam, c = bytearray(ip6(encode(advert_for(V3_6, 100), src=SRC6))), 6, V3_6
    for pos, val in flips:
        pkt[pos % len(pkt)] = val
    data = bytes(pkt[: len(pkt) - cut % 8])
    verdict, adv = receive(data, fam, c)
    if adv is None:
        assert verdict in (Verdict.MALFORMED, Verdict.VERSION)
    else:
        assert 0 <= adv.priority <= 255 and 0 <= adv.vrid <= 255
        assert all(a.version == fam for a in adv.addresses)
        if verdict.accepted:  # whatever got through is what this instance expects
            assert adv.checksum_ok and adv.vrid == c.vrid and adv.version == c.version


# ------------------------------------------------------------------ config rules


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="at most 8"):
        AuthConf("123456789")
    with pytest.raises(ValueError, match="version 3"):
        cfg4(virtual_ipaddresses=VIPS6)  # v2 is IPv4 only
    with pytest.raises(ValueError, match="whole seconds"):
        cfg4(advert_interval=0.5)
    with pytest.raises(ValueError, match="centiseconds"):
        cfg4(version=3, advert_interval=0.005)
    with pytest.raises(ValueError, match="vrid"):
        cfg4(vrid=0)
    with pytest.raises(ValueError, match="priority"):
        cfg4(priority=256)
    with pytest.raises(ValueError, match="only in VRRPv2"):
        cfg4(version=3, auth=AuthConf("x"))
    assert AuthConf("abc").wire == b"abc\0\0\0\0\0"
    assert V3_4.adver_int_wire == 10 and V2_PASS.adver_int_wire == 1


# ------------------------------------------------------------------ stats


def test_drop_stats_count_and_rate_limit(caplog: pytest.LogCaptureFixture) -> None:
    stats = DropStats(interval=10.0)
    caplog.set_level(logging.INFO, logger="pylb.vrrp")
    for t in (0.0, 1.0, 2.0):
        stats.record(Verdict.TTL, t, "VI_1", "ttl 254 from 192.0.2.2")
    assert stats.counters["ttl"] == 3
    assert len(caplog.records) == 1  # one line, two suppressed
    stats.record(Verdict.AUTH, 2.5, "VI_1")  # another reason logs on its own
    assert len(caplog.records) == 2
    stats.record(Verdict.TTL, 11.0, "VI_1")
    assert len(caplog.records) == 3 and "2 similar suppressed" in caplog.records[-1].getMessage()
    stats.record(Verdict.OK, 11.5, "VI_1")  # an accepted advert re-arms every reason
    stats.record(Verdict.TTL, 12.0, "VI_1")
    assert len(caplog.records) == 4
    assert stats.snapshot()["ok"] == 1


def test_drop_stats_silent_when_logging_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="pylb.vrrp")
    stats = DropStats()
    assert stats.log_ratelimited("x", 0.0, logging.INFO, "%s", "never formatted") is False
    stats.record(Verdict.CHECKSUM, 0.0, "VI_1")
    assert stats.counters["checksum"] == 1 and not caplog.records
