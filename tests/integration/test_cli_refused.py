"""Broker commands against an address where nothing listens fail at once with one line naming the address
(issue 26), instead of waiting out their ``--timeout``; `events tail` prints no table header before it fails."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from taskstream.cli.broker import free_port

pytestmark = pytest.mark.integration

COMMANDS = [
    ["events", "tail"], ["events", "replay", "--to-prefix", "copy"], ["lag"], ["dlq", "list"],
    ["dlq", "redrive", "--all"], ["topics", "list"], ["topics", "create"], ["keys", "list"],
    ["keys", "revoke", "0123456789abcdef"], ["state", "rebuild", "--verify"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_refused_broker_fails_the_command_at_once_naming_the_address(command: list[str]) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    env = {**os.environ, "TASKSTREAM_BOOTSTRAP_SERVERS": address}
    wait = 60  # a command that waited out its --timeout would take this long
    command = [*command, "--timeout", str(wait)]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "taskstream.cli.main", *command], env=env, capture_output=True,
                          text=True, timeout=wait + 30)
    took = time.monotonic() - started
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines and address in lines[-1] and "refused" in lines[-1].lower(), done.stderr
    assert "TASK" not in done.stdout, "the table header was printed before the failure"
    assert took < wait / 2, f"{' '.join(command)} took {took:.1f} s: it waited for the broker instead of failing"
