"""The README's quick start, run as written: a first task, a first handler, a first workflow, the client, the CLI.

One ``taskstream dev`` on the test session's Kafka (``TASKSTREAM_BOOTSTRAP_SERVERS``, so it starts no broker of its
own) with a topic prefix of its own, started in a temporary directory with the options of the README's
``make dev ARGS="..."`` line and the ``mymodule.py`` its handler section shows. Then every ``sh`` block of the
sections "A first task", "A first handler", "A first workflow" and "The command line" runs in bash as written, with
three substitutions a reader makes by hand: the API's port for ``localhost:8080``, the id of the task submitted last
for ``<id>`` and a workflow task's id for ``<id of KEY>``. The python block of "The Python client" runs as a script.
A sample answer the README prints after a command (the unlabelled block that follows it) must agree with the real
answer on every field it shows in full. Not run: ``make dev`` / ``make test`` themselves and docker compose.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from taskstream.cli.broker import free_port
from taskstream.schemas import Settings
from tests.conftest import delete_topics, wait_until
from tests.integration.test_e2e import descendants, still_alive, tail

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"succeeded", "failed", "cancelled", "upstream_failed"}
#: Fields of a sample answer in the README that are compared with the real one (ids and times differ by nature).
SAMPLE_FIELDS = ("handler", "priority", "status", "attempt", "max_attempts", "payload", "result", "error")


def readme_sections() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def fenced_blocks(section: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block of ``section``, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", section, flags=re.M | re.S)


def json_docs(out: str) -> list[dict]:
    """Every JSON document in ``out`` (curl prints the answers of several commands back to back)."""
    dec, docs, i = json.JSONDecoder(), [], 0
    while i < len(out):
        if out[i].isspace():
            i += 1
            continue
        doc, i = dec.raw_decode(out, i)
        docs.append(doc)
    return docs


def sample_fields(sample: str) -> dict:
    """The fields of SAMPLE_FIELDS that a README sample answer shows in full (not elided with …)."""
    found = {}
    value = r'("(?:[^"\\]|\\.)*"|\{[^{}]*\}|-?\d+|null|true|false)'
    for key, raw in re.findall(r'"(' + "|".join(SAMPLE_FIELDS) + r')":' + value, sample):
        try:
            found[key] = json.loads(raw)
        except ValueError:
            continue  # elided: {"…"}
    return found


class DevStack:
    """`taskstream dev` as the README starts it, on the session's broker with its own prefix."""

    def __init__(self, broker: str, cwd: Path, args: list[str]) -> None:
        self.broker, self.cwd = broker, cwd
        self.port = free_port()
        self.prefix = f"t{uuid.uuid4().hex[:10]}"
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSTREAM_")}
        env.update(TASKSTREAM_BOOTSTRAP_SERVERS=broker, TASKSTREAM_PREFIX=self.prefix, TASKSTREAM_PARTITIONS="3",
                   TASKSTREAM_LOG_LEVEL="WARNING", TASKSTREAM_METRICS_PORT="0",
                   TASKSTREAM_GRPC_PORT=str(free_port()), TASKSTREAM_URL=self.url, NO_COLOR="1", COLUMNS="200",
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        self.env = env
        self.log_path = cwd / "dev.log"
        cmd = [sys.executable, "-m", "taskstream.cli.main", "dev", "--port", str(self.port),
               "--data-dir", str(cwd / "data"), *args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"dev exited with {self.proc.returncode}:\n{tail(self.log_path)}"
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def finished(self, task_id: str) -> dict | None:
        task = self.http.get(f"/api/v1/tasks/{task_id}").json()
        return task if task.get("status") in TERMINAL else None

    def run(self, script: str) -> str:
        r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=self.cwd, env=self.env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{script}\n--- exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        return r.stdout

    def stop(self) -> None:
        if self.proc.poll() is None:
            family = descendants(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            wait_until(lambda: not still_alive(family), timeout=15, message="dev's children gone")
        self.http.close()
        delete_topics(Settings(bootstrap_servers=self.broker, prefix=self.prefix))


@pytest.fixture(scope="module")
def readme() -> dict[str, str]:
    return readme_sections()


@pytest.fixture(scope="module")
def stack(broker, readme, tmp_path_factory):
    section = readme["A first handler"]
    module = [body for lang, body in fenced_blocks(section) if lang == "python" and body.startswith("# mymodule.py")]
    assert len(module) == 1, "the README's first handler shows one mymodule.py"
    cwd = tmp_path_factory.mktemp("readme")
    (cwd / "mymodule.py").write_text(module[0])
    args = re.search(r'^make dev ARGS="([^"]*)"$', section, flags=re.M)
    assert args, "the README's first handler says how to start make dev with it"
    dev = DevStack(broker, cwd, shlex.split(args.group(1)))
    try:
        wait_until(dev.ready, timeout=180, interval=0.2, message="dev's API ready")
        yield dev
    finally:
        dev.stop()


def run_section(dev: DevStack, section: str) -> list[list[dict]]:
    """Run every sh block of ``section`` in order; the JSON documents each printed (checked against samples)."""
    last_id: str | None = None
    workflow: dict[str, str] = {}
    results: list[list[dict]] = []
    blocks = fenced_blocks(section)
    for n, (lang, body) in enumerate(blocks):
        if lang != "sh":
            continue
        for key in re.findall(r"<id of (\w+)>", body):
            wait_until(lambda k=key, w=workflow: dev.finished(w[k]), timeout=60, message=f"workflow task {key} to end")
            body = body.replace(f"<id of {key}>", workflow[key])
        if "<id>" in body:
            assert last_id, "a command uses <id> before any task was submitted"
            wait_until(lambda t=last_id: dev.finished(t), timeout=60, message=f"task {last_id} to end")
            body = body.replace("<id>", last_id)
        out = dev.run(body.replace("localhost:8080", f"127.0.0.1:{dev.port}"))
        docs = json_docs(out) if out.lstrip().startswith("{") else []
        for doc in docs:
            if "workflow_id" in doc and isinstance(doc.get("tasks"), dict):
                workflow = doc["tasks"]
            elif "id" in doc and "-XPOST" in body:
                last_id = doc["id"]
        if n + 1 < len(blocks) and blocks[n + 1][0] == "" and docs:
            shown = sample_fields(blocks[n + 1][1])
            actual = {k: docs[0].get(k) for k in shown}
            assert actual == shown, f"the README's sample answer of\n{body}\nsays {shown}, the API answered {actual}"
        results.append(docs)
    return results


def test_a_first_task_runs_as_the_readme_shows(stack: DevStack, readme) -> None:
    (posted,), (got, listed) = run_section(stack, readme["A first task"])
    assert posted["handler"] == "echo" and posted["priority"] == "high"
    assert got["id"] == posted["id"] and got["status"] == "succeeded" and got["result"] == {"hello": "world"}
    assert posted["id"] in [t["id"] for t in listed["tasks"]]


def test_a_first_handler_and_a_permanent_error_run_as_the_readme_shows(stack: DevStack, readme) -> None:
    (ok,), (ok_now,), (bad,), (bad_now,) = run_section(stack, readme["A first handler"])
    assert ok_now["id"] == ok["id"] and ok_now["status"] == "succeeded"
    assert ok_now["result"] == {"greeting": "Hello, Ada!", "attempt": 1}
    assert bad_now["id"] == bad["id"] and bad_now["status"] == "failed" and bad_now["attempt"] == 1
    assert bad_now["error"] == "PermanentError: payload.name must be a string"


def test_a_first_workflow_runs_as_the_readme_shows(stack: DevStack, readme) -> None:
    (submitted,), (shout,) = run_section(stack, readme["A first workflow"])
    assert set(submitted["tasks"]) == {"greet", "shout", "done"}
    assert shout["id"] == submitted["tasks"]["shout"] and shout["result"] == {"shouted": "HELLO, ADA!"}
    done = wait_until(lambda: stack.finished(submitted["tasks"]["done"]), timeout=60, message="the last task")
    assert done["status"] == "succeeded"


def test_the_readme_client_example_runs(stack: DevStack, readme) -> None:
    (example,) = [body for lang, body in fenced_blocks(readme["The Python client"]) if lang == "python"]
    r = subprocess.run([sys.executable, "-c", example], cwd=stack.cwd, env=stack.env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0] == "{'hello': 'world'}"
    assert lines[1] == "failed: PermanentError: payload.name must be a string"  # greet, by reference
    assert lines[2] == "{'a': 1, 'b': None}"
    events = lines[3]  # the upstream's history: its DependencyRegistered may come at any point
    assert sorted(ast.literal_eval(events)) == ["DependencyRegistered", "TaskCreated", "TaskQueued", "TaskSucceeded"]
    assert any(line.endswith(" echo {'team': 'docs'}") for line in lines[4:-1])  # the list found the labelled task
    assert lines[-1] == "invalid: priority - Input should be 'high', 'medium' or 'low'"


def test_the_readme_cli_commands_run(stack: DevStack, readme) -> None:
    (commands,) = [body for lang, body in fenced_blocks(readme["The command line"]) if lang == "sh"]
    out = stack.run(commands)
    assert "succeeded" in out and "echo" in out
    assert "TaskSucceeded" in out  # events tail read the stack's log
