"""`pylb`: the one command line (run | check | demo | ctl | import).

Subcommands import their module on use, so `pylb check` never loads the data plane and
`pylb --version` loads nothing.

Exit codes: 0 success; 1 invalid configuration or failed start; 2 usage errors (argparse's
convention) and commands that do not exist yet.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pylb import __version__


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pylb",
        description="Pure-Python load balancer and VRRP VIP manager "
        "(HAProxy + Keepalived replacement).",
    )
    p.add_argument("--version", action="version", version=f"pylb {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the master and its workers in the foreground")
    run.add_argument(
        "-c",
        "-f",
        "--config",
        dest="config",
        required=True,
        metavar="FILE",
        help="configuration file (YAML or JSON)",
    )
    run.add_argument(
        "--check",
        action="store_true",
        help="only validate the configuration and exit (0 valid, 1 errors)",
    )

    check = sub.add_parser("check", help="validate configuration files")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--format", choices=("text", "json"), default="text")

    demo = sub.add_parser("demo", help="three demo backends on loopback behind pylb")
    demo.add_argument(
        "--port",
        type=_port,
        default=8080,
        help="listener port (default 8080; a free port if busy; 0 = all ports free)",
    )
    demo.add_argument("--host", default="127.0.0.1", help="listener address (default 127.0.0.1)")
    demo.add_argument("--open", action="store_true", help="open the service URL in a browser")
    demo.add_argument("--no-browser", action="store_true", help="do not open a browser (default)")

    ctl = sub.add_parser("ctl", help="runtime API client: show stat, disable server L/S, ...")
    ctl.add_argument("-s", "--socket", metavar="SOCKET", help="admin socket (global.admin_socket)")
    ctl.add_argument("words", nargs="*", metavar="COMMAND")

    imp = sub.add_parser("import", help="convert haproxy.cfg / keepalived.conf (not yet)")
    imp.add_argument("files", nargs="*", metavar="FILE")
    return p


def _port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "run":
        if args.check:
            from pylb.config.check import run_check

            return run_check([args.config])
        from pylb.supervisor import run_master

        return run_master(args.config)
    if args.command == "check":
        from pylb.config.check import run_check

        return run_check(args.files, fmt=args.format)
    if args.command == "demo":
        from pylb.demo import run_demo

        return run_demo(args.port, args.host, open_browser=args.open and not args.no_browser)
    if args.command == "ctl":
        try:
            from pylb.admin.client import run_ctl
        except ImportError:  # the runtime API is issue 6
            print("pylb ctl: the runtime API arrives with issue 6", file=sys.stderr)
            return 2
        return run_ctl(args.socket, " ".join(args.words))
    if args.command == "import":
        print(
            "pylb import: haproxy.cfg / keepalived.conf import is not implemented yet",
            file=sys.stderr,
        )
        return 2
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover - argparse checks
    return 2
