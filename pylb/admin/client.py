"""`pylb ctl -s SOCKET COMMAND...`: send one runtime API line, print the answer.

Blocking and tiny on purpose (no event loop, no config parsing): it runs in scripts and
in emergencies. The words are joined with spaces, so `pylb ctl disable server api/ctl01`
and `pylb ctl "show info; show stat"` both work.

Exit codes: 0 answered; 1 the command was answered with an error (HAProxy's wording:
"No such ...", "Require ...", "Unknown command", "... expects ..."); 2 the socket could
not be reached.
"""

from __future__ import annotations

import socket
import sys
from typing import TextIO

DEFAULT_SOCKET = "/run/pylb/admin.sock"
TIMEOUT = 30.0  # `show stat` of a big config is still instant; a hung worker is not
ERROR_PREFIXES = (
    "No such ",
    "Require ",
    "Unknown command",
    "Can't find ",
    "'set server",
    "Weight string",
    "Relative weight",
    "Absolute weight",
    "Command line too long",
    "Internal error",
)


def query(socket_path: str, command: str, timeout: float = TIMEOUT) -> str:
    """Send `command` (one line) and return the whole answer. Raises OSError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(socket_path)
        s.sendall(command.replace("\n", " ").encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")


def is_error(answer: str) -> bool:
    return any(line.startswith(ERROR_PREFIXES) for line in answer.splitlines())


def run_ctl(
    socket_path: str | None, command: str, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Entry point of `pylb ctl`; prints the answer without its final empty line."""
    out = out or sys.stdout
    err = err or sys.stderr
    path = socket_path or DEFAULT_SOCKET
    if not command.strip():
        print("pylb ctl: no command given (try: pylb ctl help)", file=err)
        return 2
    try:
        answer = query(path, command)
    except OSError as e:
        print(f"pylb ctl: cannot talk to {path}: {e.strerror or e}", file=err)
        return 2
    text = answer.rstrip("\n")
    if text:
        print(text, file=out)
    return 1 if is_error(answer) else 0
