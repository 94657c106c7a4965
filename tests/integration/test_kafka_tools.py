"""Ordinary Kafka tooling against our topics: Debian's kcat lists them and reads records whose values decode
with nothing but fastavro and the ``.avsc`` files, and the documents' kcat commands (docs/wire-format.md, and any
other page of README.md and docs/ that shows one in an ``sh`` block) run as written (broker address and topic prefix
swapped for the test's own).

Not run here: the rpk commands (rpk is in none of the registries these machines reach) and the
``kcat -s value=avro`` one (Debian's kcat is built without Avro support); both are marked in docs/wire-format.md.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import fastavro
import pytest

from taskstream.schemas import TaskCreated, TaskQueued, TaskSucceeded, Topics, catalogue, codec

from ..kafka_helpers import producer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
AVRO = ROOT / "schemas" / "avro"
T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
KCAT = shutil.which("kcat")


@pytest.fixture
def written(settings) -> list:
    """Three events of one task on ``<p>.events``, written as the API and processor write them."""
    task_id = uuid.uuid4().hex
    events = [
        TaskCreated(task_id=task_id, occurred_at=T0, producer="api", handler="echo", payload='{"n": 1}'),
        TaskQueued(task_id=task_id, occurred_at=T0, producer="processor", attempt=1, priority="medium"),
        TaskSucceeded(task_id=task_id, occurred_at=T0, producer="executor", attempt=1, result='{"ok": true}'),
    ]
    p = producer(settings)
    for e in events:
        p.produce(Topics(settings.prefix).events, codec.encode(e), e.task_id.encode(), headers=codec.headers(e))
    assert p.flush(10) == 0
    return events


def kcat(*args: str) -> subprocess.CompletedProcess:
    assert KCAT, "kcat is not installed (make test installs Debian's kcat)"
    return subprocess.run([KCAT, *args], capture_output=True, timeout=60)


def test_kcat_lists_every_topic_of_ours(settings) -> None:
    r = kcat("-b", settings.bootstrap_servers, "-L")
    assert r.returncode == 0, r.stderr
    listed = set(re.findall(r'topic "([^"]+)"', r.stdout.decode()))
    assert {spec.name for spec in catalogue(settings)} <= listed


def _schemas_by_fingerprint() -> dict[bytes, dict]:
    out = {}
    for path in AVRO.glob("*.avsc"):
        schema = fastavro.parse_schema(json.loads(path.read_text()))
        out[bytes.fromhex(fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(schema),
                                                       "CRC-64-AVRO"))] = schema
    return out


def test_kcat_reads_records_that_decode_with_only_the_schema_files(settings, written) -> None:
    events = Topics(settings.prefix).events
    r = kcat("-C", "-b", settings.bootstrap_servers, "-t", events, "-o", "beginning", "-e", "-q",
             "-f", "%k\t%h\t%S\t%s\x1e")
    assert r.returncode == 0, r.stderr
    records = [rec for rec in r.stdout.split(b"\x1e") if rec]
    assert len(records) == len(written)  # nothing but our events: no marker records
    schemas = _schemas_by_fingerprint()
    decoded = []
    for rec in records:
        key, headers, size, value = rec.split(b"\t", 3)
        assert int(size) == len(value)
        assert value[:2] == b"\xc3\x01"  # Avro single-object encoding
        fingerprint = value[2:10]  # CRC-64-AVRO of the writer schema, as fastavro prints it
        body = fastavro.schemaless_reader(io.BytesIO(value[10:]), schemas[fingerprint], None)
        decoded.append((key.decode(), headers.decode(), body))
    assert [k for k, _, _ in decoded] == [e.task_id for e in written]
    assert [h for _, h, _ in decoded] == [f"event-type={type(e).__name__}" for e in written]
    assert decoded[0][2]["handler"] == "echo" and decoded[2][2]["result"] == '{"ok": true}'


def _doc_blocks_with_kcat() -> list[str]:
    blocks = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        blocks += re.findall(r"```sh\n(.*?)```", doc.read_text(), flags=re.S)
    return [b for b in blocks if re.search(r"^kcat ", b, flags=re.M)]


def _runnable(block: str) -> str:
    """The block as a bash script, without the commands this machine cannot run (rpk; kcat with Avro)."""
    lines, skip = [], False
    for line in block.splitlines():
        starts = line.split(" ", 1)[0] if not skip else ""
        if starts == "rpk" or (starts == "kcat" and "value=avro" in line):
            skip = True
        if not skip:
            lines.append(line)
        if skip and not line.rstrip().endswith("\\"):
            skip = False
    return "\n".join(lines)


def test_the_documented_kcat_commands_run_as_written(settings, written, tmp_path) -> None:
    blocks = [_runnable(b) for b in _doc_blocks_with_kcat()]
    blocks = [b for b in blocks if re.search(r"^kcat ", b, flags=re.M)]
    assert blocks, "the documents show no kcat command"
    outputs = []
    for block in blocks:
        script = (block.replace("127.0.0.1:9092", settings.bootstrap_servers)
                  .replace("taskstream.", f"{settings.prefix}.")
                  .replace("/tmp/", f"{tmp_path}/")
                  .replace("python -c", f"{sys.executable} -c"))
        r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, f"{script}\n---\n{r.stderr[-2000:]}"
        outputs.append(r.stdout)
    out = "\n".join(outputs)
    assert written[0].task_id in out
    assert "event-type=TaskCreated" in out
