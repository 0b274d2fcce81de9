"""Notify scripts: `notify.master/backup/fault/stop`, called as keepalived calls them.

Arguments are keepalived's generic notify arguments: ``SCRIPT INSTANCE <name> <STATE>
<priority>`` (the script string may carry its own leading arguments, split with shlex;
no shell is involved). Why the care:

- never blocking: a script runs as a child process while the speaker keeps advertising;
  a script that hangs must not delay an advert, so it is killed (its whole process
  group) after `timeout`;
- in order per instance: a BACKUP notification queued before a MASTER one must not
  overtake it (keepalived's notify FIFO has the same purpose), so each instance has one
  queue, run by one task that exists only while the queue is not empty;
- `drain()` lets a stopping speaker wait (bounded) for its STOP notifications.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Sequence

log = logging.getLogger("pylb.vrrp.notify")


def notify_argv(script: str, instance: str, state: str, priority: int) -> list[str]:
    """keepalived's notify command line for one transition."""
    return [*shlex.split(script), "INSTANCE", instance, state, str(priority)]


async def run_script(argv: Sequence[str], timeout: float) -> int | None:
    """Run `argv` with no stdin/stdout; return its exit status, None when it was killed
    for running past `timeout` or could not start (logged)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # a process group of its own: killed as a whole
        )
    except OSError as e:
        log.error("cannot run %s: %s", argv[0], e.strerror or e)
        return None
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        log.error("%s still running after %gs: killed", argv[0], timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await proc.wait()
        return None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise


class Notifier:
    """Ordered, non-blocking notify-script runs, one queue per instance."""

    __slots__ = ("_queues", "_tasks", "failures", "runs", "timeout")

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._queues: dict[str, collections.deque[list[str]]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.runs = 0
        self.failures = 0

    def notify(self, script: str | None, instance: str, state: str, priority: int) -> None:
        """Queue one call of `script` (nothing when the instance has none configured)."""
        if not script:
            return
        argv = notify_argv(script, instance, state, priority)
        self._queues.setdefault(instance, collections.deque()).append(argv)
        if instance not in self._tasks:
            self._tasks[instance] = asyncio.get_running_loop().create_task(
                self._consume(instance), name=f"notify-{instance}"
            )

    async def _consume(self, instance: str) -> None:
        queue = self._queues[instance]
        try:
            while queue:
                argv = queue.popleft()
                self.runs += 1
                status = await run_script(argv, self.timeout)
                if status != 0:
                    self.failures += 1
                    if status is not None:
                        log.warning("notify %s exited with %d", shlex.join(argv), status)
        finally:
            self._tasks.pop(instance, None)

    async def drain(self, timeout: float) -> bool:
        """Wait until every queued script has run (at most `timeout`); True if done."""
        tasks = list(self._tasks.values())
        if not tasks:
            return True
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        return not pending

    def cancel(self) -> None:
        for t in self._tasks.values():
            t.cancel()
