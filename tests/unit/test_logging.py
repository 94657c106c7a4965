"""The JSON log format and the rule that log lines never show payloads, results or checkpoint data."""

from __future__ import annotations

import ast
import io
import json
import logging
from pathlib import Path

import pytest

from taskstream.schemas import Settings
from taskstream.schemas.observability import JsonFormatter, about, log_handler

PACKAGE = Path(__file__).resolve().parents[2]
#: Names that hold users' data: a log call must never pass one as an argument.
USER_DATA = {"payload", "result", "result_json", "data", "upstream", "upstream_results", "last_checkpoint",
             "checkpoint", "body", "template"}


def _logger(settings: Settings) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    logger = logging.getLogger(f"taskstream.test.{id(out)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.handlers = [log_handler(settings, out)]
    return logger, out


def test_json_lines_carry_time_level_logger_message_and_the_task_fields() -> None:
    logger, out = _logger(Settings(log_format="json"))
    logger.info("task %s attempt %d: timed out after %ss", "t-1", 2, 1.5, extra=about("t-1", 2))
    logger.warning("plain line with ünïcode and \"quotes\"\nand a newline")
    logger.info("about a task, no attempt", extra=about("t-2"))
    first, second, third = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "task t-1 attempt 2: timed out after 1.5s"
    assert (first["task_id"], first["attempt"], first["level"]) == ("t-1", 2, "INFO")
    assert first["logger"] == logger.name
    assert first["time"].endswith("Z") and first["time"][10] == "T"
    assert "task_id" not in second and "attempt" not in second and "exc_info" not in second
    assert second["message"] == "plain line with ünïcode and \"quotes\"\nand a newline"
    assert third["task_id"] == "t-2" and "attempt" not in third


def test_json_lines_carry_the_traceback() -> None:
    logger, out = _logger(Settings(log_format="json"))
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("handler failed", extra=about("t-3", 1))
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["level"] == "ERROR" and record["exc_info"].startswith("Traceback")
    assert "ValueError: boom" in record["exc_info"]


def test_formatting_stays_lazy() -> None:
    class Loud:
        def __str__(self) -> str:
            raise AssertionError("a filtered-out record was formatted")

    logger, out = _logger(Settings(log_format="json"))
    logger.debug("never shown %s", Loud(), extra=about("t-4", 1))
    assert out.getvalue() == ""


def test_text_is_the_default() -> None:
    logger, out = _logger(Settings())
    logger.info("task %s attempt %d: succeeded", "t-5", 1, extra=about("t-5", 1))
    line = out.getvalue().strip()
    assert line.endswith(f"{logger.name}: task t-5 attempt 1: succeeded") and not line.startswith("{")


def test_log_format_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKSTREAM_LOG_FORMAT", "json")
    assert Settings().log_format == "json"
    with pytest.raises(ValueError):
        Settings(log_format="xml")
    assert isinstance(log_handler(Settings(log_format="json"), io.StringIO()).formatter, JsonFormatter)


def _log_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("debug", "info", "warning", "error", "exception", "critical")
                and isinstance(node.func.value, ast.Name) and node.func.value.id in ("log", "logger", "logging")):
            yield node


def test_no_log_call_passes_user_data() -> None:
    """Payloads, results, checkpoints and upstream results can hold secrets: no log call is given one."""
    offenders = []
    calls = 0
    for package in ("api", "streams", "executors", "schemas", "cli"):
        for path in sorted((PACKAGE / package).rglob("*.py")):
            for call in _log_calls(ast.parse(path.read_text())):
                calls += 1
                for arg in [*call.args[1:], *(k.value for k in call.keywords if k.arg != "extra")]:
                    name = arg.attr if isinstance(arg, ast.Attribute) else arg.id if isinstance(arg, ast.Name) else None
                    if name in USER_DATA:
                        offenders.append(f"{path.relative_to(PACKAGE)}:{call.lineno} logs {name}")
    assert calls > 50  # the scan found the code
    assert offenders == []


def test_every_executor_log_line_about_an_attempt_carries_its_fields() -> None:
    """In the executor, a log call whose message starts with "task %s" passes extra= with the task's fields."""
    about_task = [c for module in ("runtime.py", "_intake.py", "_dispatch.py", "_attempt.py")
                  for c in _log_calls(ast.parse((PACKAGE / "executors" / module).read_text()))
                  if c.args and isinstance(c.args[0], ast.Constant) and str(c.args[0].value).startswith("task %s")]
    assert len(about_task) > 15
    missing = [c.lineno for c in about_task if not any(k.arg == "extra" for k in c.keywords)]
    assert missing == []


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_long_messages_and_tracebacks_are_cut(log_format: str) -> None:
    from taskstream.schemas.observability import MAX_LOG_MESSAGE_CHARS, MAX_LOG_TRACEBACK_CHARS

    logger, out = _logger(Settings(log_format=log_format))
    logger.warning("x" * 100_000)
    try:
        raise ValueError("y" * 100_000 + "END")
    except ValueError:
        logger.exception("failed")
    text = out.getvalue()
    assert len(text) < MAX_LOG_MESSAGE_CHARS + MAX_LOG_TRACEBACK_CHARS + 1000
    assert "characters cut" in text and "END" in text  # a traceback keeps its end
