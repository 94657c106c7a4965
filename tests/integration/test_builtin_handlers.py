"""The built-in http and shell handlers run by a real executor: registered by name, guarded by its settings."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from taskstream.schemas import TaskFailed, TaskSucceeded, codec
from tests.integration.test_executor import EventLog, Feeder, ready, running

pytestmark = pytest.mark.integration


class _Ok(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_http_and_shell_through_an_executor(settings) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    s = settings.model_copy(
        update={
            "http_allowed_hosts": ["127.0.0.1", "169.254.169.254"],
            "http_allowed_networks": ["127.0.0.1/32"],
            "shell_enabled": True,
            "shell_allowed_commands": ["echo"],
        }
    )
    url = f"http://127.0.0.1:{server.server_address[1]}/hello"
    feeder, events = Feeder(s), EventLog(s)
    try:
        tasks = feeder.send(ready("http", {"url": url}), ready("shell", {"argv": ["echo", "hi there"]}),
                            ready("http", {"url": "http://169.254.169.254/latest/meta-data/"}),
                            ready("shell", {"argv": ["cat", "/etc/passwd"]}))
        with running(s):
            got = events.wait_for([t.task_id for t in tasks])
        (http_ok,), (shell_ok,), (metadata,), (cat,) = (got[t.task_id] for t in tasks)
        assert isinstance(http_ok, TaskSucceeded) and isinstance(shell_ok, TaskSucceeded)
        result = codec.loads_json(http_ok.result)
        assert result["status"] == 200 and json.loads(result["body"]) == {"path": "/hello"}
        assert codec.loads_json(shell_ok.result)["stdout"] == "hi there\n"
        assert isinstance(metadata, TaskFailed) and metadata.permanent and "non-public" in metadata.error
        assert isinstance(cat, TaskFailed) and cat.permanent and "shell_allowed_commands" in cat.error
    finally:
        events.close()
        server.shutdown()
        server.server_close()
