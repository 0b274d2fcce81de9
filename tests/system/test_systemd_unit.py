"""systemd/pylb.service: the directives issue 6 asks for, and `systemd-analyze verify`.

`verify` checks that the executables exist, so the unit is verified as installed: a
copy whose /usr/local/bin/pylb (the documented install path, absent on a dev machine)
points at a small wrapper that runs this checkout's pylb with the venv's Python.
Everything else in the copy is the committed unit, byte for byte.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "pylb.service"
INSTALLED_BIN = "/usr/local/bin/pylb"


def directives() -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (a key may repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            out.setdefault(section, {})
            continue
        assert section is not None, f"directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line}"
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def one(d: dict[str, list[str]], key: str) -> str:
    assert key in d, f"{key}= missing"
    assert len(d[key]) == 1, f"{key}= given {len(d[key])} times"
    return d[key][0]


def test_unit_parses_as_ini():
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    cp.read_string(UNIT.read_text())
    assert cp.sections() == ["Unit", "Service", "Install"]


def test_service_directives():
    svc = directives()["Service"]
    assert one(svc, "Type") == "notify"
    assert one(svc, "NotifyAccess") == "main"
    assert one(svc, "WatchdogSec").endswith("s")
    assert one(svc, "ExecStartPre") == f"{INSTALLED_BIN} check /etc/pylb/pylb.yaml"
    assert one(svc, "ExecStart") == f"{INSTALLED_BIN} run -c /etc/pylb/pylb.yaml"
    assert one(svc, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(svc, "User") == "pylb" and one(svc, "Group") == "pylb"
    caps = {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"}
    assert set(one(svc, "AmbientCapabilities").split()) == caps
    assert set(one(svc, "CapabilityBoundingSet").split()) == caps
    assert one(svc, "NoNewPrivileges") == "yes"
    assert one(svc, "ProtectSystem") == "strict"
    assert one(svc, "ProtectHome") == "yes"
    assert one(svc, "PrivateTmp") == "yes"
    assert one(svc, "RestrictAddressFamilies").split() == [
        "AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET",
    ]  # fmt: skip
    assert one(svc, "SystemCallFilter") == "@system-service"
    assert one(svc, "RuntimeDirectory") == "pylb"  # /run/pylb/admin.sock
    assert one(svc, "KillMode") == "mixed"
    assert one(svc, "Restart") == "on-failure"
    assert one(svc, "LimitNOFILE").isdigit()
    assert "TimeoutStopSec" in svc
    assert one(directives()["Install"], "WantedBy") == "multi-user.target"


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (package systemd)",
)
def test_systemd_analyze_verify(tmp_path):
    unit, wrapper = installed_copy(tmp_path)
    proc = verify(unit)
    # systemd 252 exits 0 even for directives it ignores ("Failed to parse ..., ignoring"):
    # a clean unit is one about which it prints nothing at all.
    assert proc.returncode == 0, proc.stderr
    assert "pylb.service" not in proc.stderr, proc.stderr
    # the wrapper really is a working pylb (what ExecStartPre would run)
    out = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("pylb ")


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (package systemd)",
)
def test_verify_would_catch_a_bad_directive(tmp_path):
    """The check above means something: a typo in the unit is reported."""
    unit, _ = installed_copy(tmp_path)
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=strikt"))
    proc = verify(unit)
    assert proc.returncode != 0 or "pylb.service" in proc.stderr


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit.parent,
    )


def installed_copy(tmp_path: Path) -> tuple[Path, Path]:
    """The committed unit with the install path of pylb pointing at this checkout."""
    wrapper = tmp_path / "pylb"
    repo = UNIT.parents[1]
    wrapper.write_text(
        f'#!/bin/sh\ncd "{repo}" && exec "{sys.executable}" -m pylb "$@"\n', encoding="utf-8"
    )
    wrapper.chmod(0o755)
    text = UNIT.read_text()
    assert text.count(f"={INSTALLED_BIN} ") == 2  # ExecStartPre and ExecStart
    unit = tmp_path / "pylb.service"
    unit.write_text(text.replace(INSTALLED_BIN, str(wrapper)))
    return unit, wrapper
