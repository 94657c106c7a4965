"""The built-in ``shell`` handler: run one allow-listed command, off unless ``shell_enabled``.

Payload: ``{"argv": ["/usr/bin/convert", "in.png", "out.jpg"], "timeout_s": 30}``. Result:
``{"exit_code": 0, "stdout": "...", "stderr": "...", "truncated": false}``.

Guards:

- off by default: with ``shell_enabled`` false every task fails permanently;
- an argv list only, never a shell command line (no ``sh -c``, no expansion of any kind);
- ``argv[0]`` must equal an entry of ``shell_allowed_commands`` (a name is looked up on the scrubbed ``PATH``);
- the environment is scrubbed: only the variables named in ``shell_env`` are passed on (so no ``TASKSTREAM_*``
  secret of the executor reaches the command), stdin is empty;
- the command runs in a process group (session) of its own; at its timeout (the task's ``timeout_s`` or
  ``shell_timeout_s``, whichever is shorter), when its attempt is cancelled, and after it exits, the whole group is
  killed, so nothing it spawned outlives the task;
- stdout and stderr are read to the end but only the first ``shell_max_output_bytes`` of each are kept.

Outcomes: exit code 0 is a success. Another exit code fails the attempt (retried per the task's policy) with an
error naming only the exit code; a command that is not allowed, not found or a payload of the wrong shape is a
``PermanentError``. Output never goes into an error message or a log line above DEBUG.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
from typing import Any

from taskstream.schemas import Settings

from .context import TaskContext
from .errors import PermanentError

log = logging.getLogger(__name__)


class CommandRefused(PermanentError):
    """The guard refused the command: nothing was started."""


class CommandFailed(Exception):
    """The command exited with a code other than 0."""


async def _read_capped(stream: asyncio.StreamReader, cap: int) -> tuple[bytes, bool]:
    kept = bytearray()
    truncated = False
    while chunk := await stream.read(65536):
        room = cap - len(kept)
        if len(chunk) > room:
            truncated = True
        kept += chunk[:max(room, 0)]
    return bytes(kept), truncated


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class ShellHandler:
    """The ``shell`` handler bound to one executor's settings (the environment it passes on is read here, once)."""

    def __init__(self, settings: Settings, environ: dict[str, str] | None = None) -> None:
        self.settings = settings
        source = os.environ if environ is None else environ
        self.env = {k: source[k] for k in settings.shell_env if k in source}

    def _resolve(self, payload: Any) -> tuple[list[str], float]:
        s = self.settings
        if not s.shell_enabled:
            raise CommandRefused("shell: the shell handler is disabled (shell_enabled is off)")
        if not isinstance(payload, dict):
            raise CommandRefused("shell: payload must be an object with an 'argv' list")
        argv = payload.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise CommandRefused("shell: 'argv' must be a non-empty list of strings (no shell command line)")
        if any("\0" in a for a in argv):
            raise CommandRefused("shell: 'argv' must not contain NUL characters")
        if argv[0] not in s.shell_allowed_commands:
            log.debug("shell: command %r is not in shell_allowed_commands", argv[0])
            raise CommandRefused("shell: the command is not in shell_allowed_commands")
        path = argv[0] if os.path.isabs(argv[0]) else shutil.which(argv[0], path=self.env.get("PATH", os.defpath))
        if path is None or not os.access(path, os.X_OK):
            raise CommandRefused("shell: the allowed command was not found or is not executable")
        timeout = payload.get("timeout_s")
        if timeout is not None and (
                isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0):
            raise CommandRefused("shell: 'timeout_s' must be a positive number")
        return [path, *argv[1:]], min(timeout or s.shell_timeout_s, s.shell_timeout_s)

    async def __call__(self, payload: Any, ctx: TaskContext) -> dict:
        argv, limit = self._resolve(payload)
        cap = self.settings.shell_max_output_bytes
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=self.env, start_new_session=True, close_fds=True,
        )
        assert proc.stdout is not None and proc.stderr is not None  # both are PIPE above
        try:
            try:
                (out, out_cut), (err, err_cut), code = await asyncio.wait_for(
                    asyncio.gather(_read_capped(proc.stdout, cap), _read_capped(proc.stderr, cap), proc.wait()), limit)
            except TimeoutError:
                _kill_group(proc.pid)
                await proc.wait()
                raise TimeoutError(
                    f"shell: the command ran longer than {limit}s; its process group was killed") from None
        finally:
            _kill_group(proc.pid)  # whatever ended the wait (exit, timeout, cancellation): nothing outlives the task
        if code != 0:
            log.debug("task %s attempt %d: shell command exited %d; stderr: %r", ctx.task_id, ctx.attempt, code,
                      err[:1024])
            raise CommandFailed(f"shell: the command exited with code {code}")
        return {"exit_code": code, "stdout": out.decode("utf-8", errors="replace"),
                "stderr": err.decode("utf-8", errors="replace"), "truncated": out_cut or err_cut}
