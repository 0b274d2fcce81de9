"""The `pylb` command line: subcommands, exit codes, the console entry point."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from pylb import __version__
from pylb.cli import main
from tests.integration.conftest_process import REPO, pylb_env

GOOD = textwrap.dedent(
    """\
    listen:
      web:
        bind: ["127.0.0.1:18080"]
        mode: http
        servers:
          - {name: a, address: "127.0.0.1:18081"}
    """
)
BAD = textwrap.dedent(
    """\
    listen:
      web:
        bind: ["127.0.0.1:18080"]
        mode: http
        servers:
          - {name: a, address: "127.0.0.1:18081", weight: 300}
    """
)


@pytest.fixture
def files(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text(BAD)
    return str(good), str(bad)


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"pylb {__version__}"


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "usage: pylb" in capsys.readouterr().err


def test_unknown_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run"])  # -c is required
    assert e.value.code == 2


def test_check_exit_codes(files, capsys):
    good, bad = files
    assert main(["check", good]) == 0
    capsys.readouterr()
    assert main(["check", bad]) == 1
    out = capsys.readouterr()
    assert f"{bad}:6:" in out.out + out.err
    assert main(["check", good, bad]) == 1


def test_check_json(files, capsys):
    _, bad = files
    assert main(["check", "--format", "json", bad]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc  # the checker's JSON document; its shape belongs to pylb.config.check


def test_run_check_only_validates(files, capsys):
    good, bad = files
    assert main(["run", "-c", good, "--check"]) == 0
    assert main(["run", "-f", bad, "--check"]) == 1


def test_ctl_without_a_running_pylb_exits_2(tmp_path, capsys):
    assert main(["ctl", "-s", str(tmp_path / "missing.sock"), "show", "stat"]) == 2
    assert "missing.sock" in capsys.readouterr().err


def test_import_stub_exits_2():
    assert main(["import", "haproxy.cfg"]) == 2


def test_console_entry_point_runs_check(files):
    """`python -m pylb` is the same entry point as the `pylb` console script."""
    good, bad = files
    r = subprocess.run(
        [sys.executable, "-m", "pylb", "check", good, bad],
        cwd=REPO,
        env=pylb_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 1
    assert f"{bad}:6:" in r.stdout + r.stderr
