"""`pylb check`: output lines, summary, exit codes, JSON document."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from pylb.config.check import run_check

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

GOOD = """\
listen:
  web:
    bind: ["127.0.0.1:80"]
    servers:
      - {name: a, address: "127.0.0.1:81"}
      - {name: b, address: "127.0.0.1:82", disabled: true}
  api:
    bind: ["127.0.0.1:90"]
    servers: [{name: a, address: "127.0.0.1:91"}]
"""

BAD = """\
listen:
  web:
    bind: ["127.0.0.1:80"]
    balnce: roundrobin
    servers:
      - {name: a, address: "127.0.0.1:81", weight: 300}
      - {name: b, address: "127.0.0.1:82", disabled: true}
      - {name: c, address: "127.0.0.1:83", disabled: true}
"""

WARN = """\
listen:
  web:
    bind: ["127.0.0.1:80"]
    servers: [{name: a, address: "127.0.0.1:81", disabled: true}]
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    out = {}
    for name, text in (("good.yaml", GOOD), ("bad.yaml", BAD), ("warn.yaml", WARN)):
        p = tmp_path / name
        p.write_text(text)
        out[name] = str(p)
    return out


def check(paths: list[str], fmt: str = "text") -> tuple[int, str]:
    buf = io.StringIO()
    code = run_check(paths, fmt, buf)
    return code, buf.getvalue()


def test_clean_file(files: dict[str, str]) -> None:
    code, out = check([files["good.yaml"]])
    assert code == 0
    assert out == f"{files['good.yaml']}: OK (2 listeners, 3 servers)\n"


def test_warnings_only_exit_zero(files: dict[str, str]) -> None:
    code, out = check([files["warn.yaml"]])
    p = files["warn.yaml"]
    assert code == 0
    assert out.splitlines() == [
        f"{p}:2:3: warning: listen.web: every server is disabled: all requests will get 503",
        f"{p}: OK (1 listener, 1 server), 1 warning",
    ]


def test_errors_exit_one_with_every_line(files: dict[str, str]) -> None:
    code, out = check([files["bad.yaml"]])
    p = files["bad.yaml"]
    assert code == 1
    assert out.splitlines() == [
        f"{p}:4:5: error: listen.web: unknown key 'balnce', did you mean 'balance'?",
        f"{p}:6:52: error: listen.web.servers[0].weight: weight 300 is out of range 0..256",
        f"{p}: 2 errors",
    ]


def test_several_files_and_a_missing_one(files: dict[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.yaml")
    code, out = check([files["good.yaml"], missing, files["warn.yaml"]])
    assert code == 1
    lines = out.splitlines()
    assert lines[0].endswith("good.yaml: OK (2 listeners, 3 servers)")
    assert lines[1] == f"{missing}: error: cannot read {missing}: No such file or directory"
    assert lines[2] == f"{missing}: 1 error"
    assert lines[-1].endswith("warn.yaml: OK (1 listener, 1 server), 1 warning")


def test_a_directory_is_unreadable(tmp_path: Path) -> None:
    code, out = check([str(tmp_path)])
    assert code == 1
    assert "Is a directory" in out


def test_json_output(files: dict[str, str]) -> None:
    code, out = check([files["good.yaml"], files["bad.yaml"], files["warn.yaml"]], "json")
    assert code == 1
    doc = json.loads(out)
    assert doc["ok"] is False
    assert doc["counts"] == {"files": 3, "errors": 2, "warnings": 1}
    assert [f["ok"] for f in doc["files"]] == [True, False, True]
    assert doc["files"][0] == {
        "file": files["good.yaml"],
        "ok": True,
        "errors": 0,
        "warnings": 0,
        "listeners": 2,
        "servers": 3,
    }
    assert doc["files"][1]["listeners"] is None
    assert doc["diagnostics"][0] == {
        "file": files["bad.yaml"],
        "line": 4,
        "col": 5,
        "severity": "error",
        "path": "listen.web",
        "message": "unknown key 'balnce', did you mean 'balance'?",
    }
    assert [d["severity"] for d in doc["diagnostics"]] == ["error", "error", "warning"]


def test_json_clean(files: dict[str, str]) -> None:
    code, out = check([files["good.yaml"]], "json")
    assert code == 0
    assert json.loads(out)["ok"] is True


def test_bad_format_and_no_files() -> None:
    assert check(["x"], "xml")[0] == 2
    assert check([])[0] == 2


def test_example_configs_pass() -> None:
    code, out = check([str(CONF_DIR / "demo.yaml"), str(CONF_DIR / "mcp-proxy.yaml")])
    assert code == 0, out
    assert out.count(": OK (") == 2
