"""The built-in ``shell`` handler: off by default, argv lists of allow-listed commands, scrubbed environment,
capped output, and a timeout that kills the whole process group."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest

from taskstream.executors.builtin_shell import CommandFailed, CommandRefused, ShellHandler
from taskstream.executors.context import TaskContext
from taskstream.executors.errors import PermanentError
from taskstream.schemas import Settings

CTX = TaskContext(task_id="t-shell", attempt=1, handler="shell", priority="medium")
PY = sys.executable


def enabled(**kw) -> Settings:
    return Settings(shell_enabled=True, shell_allowed_commands=[PY, "echo"], **kw)


def call(settings: Settings, payload, environ=None):
    return asyncio.run(ShellHandler(settings, environ)(payload, CTX))


def test_refused_when_disabled(tmp_path) -> None:
    marker = tmp_path / "ran"
    s = Settings(shell_allowed_commands=[PY])  # listed, but the handler is off
    with pytest.raises(CommandRefused, match="disabled"):
        call(s, {"argv": [PY, "-c", f"open({str(marker)!r}, 'w')"]})
    assert not marker.exists()


def test_refused_when_not_in_the_allow_list(tmp_path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(CommandRefused, match="not in shell_allowed_commands"):
        call(enabled(), {"argv": ["/usr/bin/touch", str(marker)]})
    assert not marker.exists()


@pytest.mark.parametrize("payload", [{"argv": "echo hi; rm -rf /"}, {"argv": []}, {"argv": ["echo", 3]}, "echo hi",
                                     {"argv": ["echo", "a\0b"]}, {"argv": ["echo"], "timeout_s": 0}])
def test_only_argv_lists(payload) -> None:
    with pytest.raises(PermanentError):
        call(enabled(), payload)


def test_an_allowed_command_runs_and_reports_its_output() -> None:
    got = call(enabled(), {"argv": [PY, "-c", "import sys; print('out'); print('err', file=sys.stderr)"]})
    assert got == {"exit_code": 0, "stdout": "out\n", "stderr": "err\n", "truncated": False}
    assert call(enabled(), {"argv": ["echo", "$HOME", "*"]})["stdout"] == "$HOME *\n"  # no shell expansion


def test_a_nonzero_exit_fails_the_attempt_without_its_output() -> None:
    with pytest.raises(CommandFailed) as err:
        call(enabled(), {"argv": [PY, "-c", "import sys; print('secret-out'); sys.exit(3)"]})
    assert not isinstance(err.value, PermanentError)
    assert str(err.value) == "shell: the command exited with code 3"


def test_output_is_capped() -> None:
    got = call(enabled(shell_max_output_bytes=100), {"argv": [PY, "-c", "print('x' * 1_000_000)"]})
    assert got["truncated"] is True and got["stdout"] == "x" * 100


def test_the_environment_is_scrubbed() -> None:
    environ = {"PATH": os.environ["PATH"], "TASKSTREAM_KAFKA_SASL_PASSWORD": "hunter2", "LANG": "C.UTF-8"}
    got = call(enabled(), {"argv": [PY, "-c", "import os, json; print(json.dumps(dict(os.environ)))"]}, environ)
    import json

    env = json.loads(got["stdout"])
    assert "TASKSTREAM_KAFKA_SASL_PASSWORD" not in env and env.get("LANG") == "C.UTF-8"
    assert set(env) <= {"PATH", "LANG", "LC_ALL", "TZ", "LC_CTYPE"}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_timeout_kills_the_process_group_children_included(tmp_path) -> None:
    pidfile = tmp_path / "child.pid"
    script = (
        f"import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        f"open({str(pidfile)!r}, 'w').write(str(c.pid)); time.sleep(60)"
    )
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="process group was killed"):
        call(enabled(), {"argv": [PY, "-c", script], "timeout_s": 1.5})
    assert time.monotonic() - started < 10
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the child the command spawned outlived the timeout"


def test_the_settings_timeout_caps_the_payloads() -> None:
    with pytest.raises(TimeoutError):
        call(enabled(shell_timeout_s=0.5), {"argv": [PY, "-c", "import time; time.sleep(30)"], "timeout_s": 60})
