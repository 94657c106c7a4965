"""Only the Kafka seam imports confluent-kafka: ``schemas/`` (the client factory, the consumer runtime, the
offsets and dead letters). Every other module reaches Kafka through it, so library errors are mapped in one place
and every consumer loop runs on the one runtime. Checked by parsing every module's imports (ast), as
test_layers.py does for the package arrows; imports inside functions count too.
"""

from __future__ import annotations

import pytest

from tests.unit.test_layers import FOLDERS, ROOT, _module_name, imported_modules

SEAM = "schemas"


def kafka_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """``module:line imports confluent_kafka`` for every import statement of confluent_kafka (or a submodule) in
    ``source``: one finding per statement."""
    lines = {line for line, target in imported_modules(source, module, is_package)
             if target == "confluent_kafka" or target.startswith("confluent_kafka.")}
    return [f"{module}:{line} imports confluent_kafka" for line in sorted(lines)]


def test_only_the_kafka_seam_imports_confluent_kafka() -> None:
    found = []
    for folder in FOLDERS:
        if folder == SEAM:
            continue
        for path in sorted((ROOT / folder).rglob("*.py")):
            found += kafka_imports(path.read_text(), _module_name(path), path.name == "__init__.py")
    assert found == [], "import Kafka through taskstream.schemas (kafka, consumer), not confluent_kafka:\n" + \
        "\n".join(found)


@pytest.mark.parametrize("source, expected", [
    ("from confluent_kafka import KafkaException", 1),
    ("import confluent_kafka", 1),
    ("from confluent_kafka.admin import AdminClient", 1),
    ("def f():\n    from confluent_kafka import TopicPartition", 1),
    ("from taskstream.schemas.consumer import ConsumerRuntime", 0),
    ("import confluent_kafka_extra", 0),
])
def test_the_checker_finds_an_import_of_confluent_kafka(source: str, expected: int) -> None:
    assert len(kafka_imports(source, "taskstream.api.example")) == expected
