"""Every Kafka client comes from the factory in ``schemas/kafka.py`` and carries the security settings.

Config level, no broker: the client classes of the factory are replaced by a recorder that keeps each config and
returns a stand-in, so components can be built with SASL/TLS settings that point at nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from taskstream.schemas import BrokerUnavailable, Settings, kafka
from taskstream.schemas.registry import SchemaRegistry, redact_url

ROOT = Path(__file__).resolve().parents[2]
CODE = ("api", "cli", "streams", "executors", "schemas", "_pkg")
CONSTRUCTORS = {"Producer", "Consumer", "AdminClient", "AsyncProducer", "SerializingProducer", "DeserializingConsumer"}
FACTORY = ROOT / "schemas" / "kafka.py"

PASSWORD = "s3cret-sasl-password"
KEY_PASSWORD = "k3y-password"


def constructor_calls(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name in CONSTRUCTORS:
                out.append((node.lineno, name))
    return out


def test_no_module_but_the_factory_constructs_a_kafka_client() -> None:
    offenders = [
        f"{p.relative_to(ROOT)}:{line} {name}("
        for folder in CODE
        for p in sorted((ROOT / folder).rglob("*.py"))
        if p != FACTORY
        for line, name in constructor_calls(p)
    ]
    assert offenders == []
    assert {name for _, name in constructor_calls(FACTORY)} >= {"AsyncProducer"}  # the check sees calls at all


@pytest.fixture
def secure(tmp_path: Path) -> Settings:
    key_password = tmp_path / "key-password"
    key_password.write_text(KEY_PASSWORD + "\n")  # a mounted Secret file, trailing newline dropped
    return Settings(
        bootstrap_servers="broker-0.example:9093", prefix="sec", data_dir=tmp_path / "data", metrics_port=0,
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="taskstream",
        kafka_sasl_password=SecretStr(PASSWORD), kafka_ssl_key_password_file=key_password,
        kafka_config={"ssl.endpoint.identification.algorithm": SecretStr("https"),
                      "enable.ssl.certificate.verification": SecretStr("true")},
    )


EXPECTED = {
    "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "taskstream",
    "sasl.password": PASSWORD, "ssl.key.password": KEY_PASSWORD, "ssl.endpoint.identification.algorithm": "https",
    "enable.ssl.certificate.verification": "true",
}


class Stand:
    """A stand-in client: every method answers None, nothing connects."""

    def __init__(self, kind: str, config: dict) -> None:
        self.kind, self.config = kind, config

    def __getattr__(self, name):
        return lambda *a, **kw: None


@pytest.fixture
def recorded(monkeypatch) -> list[tuple[str, dict]]:
    seen: list[tuple[str, dict]] = []
    for kind in ("producer", "consumer", "admin"):
        def make(config, kind=kind):
            seen.append((kind, config))
            return Stand(kind, config)
        monkeypatch.setitem(kafka.CLIENT_CLASSES, kind, make)
    return seen


def carries(config: dict) -> bool:
    return all(config.get(k) == v for k, v in EXPECTED.items())


def test_security_config_from_settings_and_secret_files(secure: Settings) -> None:
    assert kafka.security_config(secure) == EXPECTED
    assert kafka.security_config(Settings()) == {}
    assert PASSWORD not in repr(secure) and PASSWORD not in str(secure.model_dump(mode="json"))


def test_passthrough_takes_only_security_properties() -> None:
    with pytest.raises(ValueError, match="only ssl") as err:
        Settings(kafka_config={"bootstrap.servers": "evil:9092", "sasl.password": "hunter2"})
    assert "hunter2" not in str(err.value)


def test_an_unreadable_secret_file_is_an_error_naming_the_setting(tmp_path: Path) -> None:
    s = Settings(kafka_sasl_password_file=tmp_path / "missing")
    with pytest.raises(BrokerUnavailable, match="kafka_sasl_password_file"):
        kafka.security_config(s)


def test_every_factory_function_carries_the_security_config_and_overrides_cannot_drop_it(
        secure: Settings, recorded) -> None:
    kafka.producer(secure, "p", {"linger.ms": 5, "sasl.password": "overridden"})
    kafka.consumer(secure, "c", "group", {"max.poll.interval.ms": 600000})
    kafka.reader(secure, "r", "group-r")
    kafka.admin(secure)
    kafka.async_producer(secure, "a").close(0.1)
    assert [k for k, _ in recorded] == ["producer", "consumer", "consumer", "admin", "producer"]
    assert all(carries(c) for _, c in recorded), recorded
    assert recorded[0][1]["linger.ms"] == 5 and recorded[1][1]["max.poll.interval.ms"] == 600000


def test_every_producer_is_idempotent_with_acks_all_whatever_the_overrides(recorded) -> None:
    s = Settings()
    kafka.producer(s, "p", {"acks": "1", "enable.idempotence": False, "linger.ms": 5})
    kafka.async_producer(s, "a", {"acks": 0}).close(0.1)
    assert [(c["acks"], c["enable.idempotence"]) for _, c in recorded] == [("all", True), ("all", True)]
    assert recorded[0][1]["linger.ms"] == 5


def test_every_client_gives_up_on_a_silent_broker_after_the_request_timeout(recorded) -> None:
    """A frozen broker keeps its connections open: each client drops one after ``request_timeout_ms``."""
    s = Settings(request_timeout_ms=4000)
    kafka.producer(s, "p")
    kafka.consumer(s, "c", "g")
    kafka.admin(s)
    assert [c["socket.timeout.ms"] for _, c in recorded] == [4000, 4000, 4000]
    assert recorded[0][1]["request.timeout.ms"] == 4000
    assert Settings().request_timeout_ms == 5000  # not librdkafka's 60 s (socket) and 30 s (produce)


def test_clients_of_every_component_carry_the_security_config(secure: Settings, recorded, tmp_path: Path) -> None:
    """Build each long-running component's clients (and the CLI's readers) with SASL settings, without a broker."""
    from taskstream.api.probe import BrokerProbe
    from taskstream.cli._log import reader as cli_reader
    from taskstream.streams import rebuild
    from taskstream.streams.processor import Processor
    from taskstream.streams.relay import RetryRelay

    Processor(secure, member_id="m")
    RetryRelay(secure, "m")
    probe = BrokerProbe(secure)
    probe._reader()
    cli_reader(secure, "events")
    rebuild._reader(secure, "taskstream-state-live")
    ids = {c["client.id"] for _, c in recorded}
    assert {"m", "m-heartbeats", "m-relay", "taskstream-admin", "taskstream-api-probe", "taskstream-cli-events",
            "taskstream-state-live"} <= ids, ids
    assert all(carries(c) for _, c in recorded), [c["client.id"] for _, c in recorded if not carries(c)]


def test_every_consumer_reads_committed_records_and_the_processor_writes_in_transactions(
    secure: Settings, recorded
) -> None:
    """Every consumer and reader the components build reads ``read_committed`` (the processor's transactions);
    the processor's producer has a transactional id of its instance, its dead letters a plain producer."""
    from taskstream.api.probe import BrokerProbe
    from taskstream.cli._log import reader as cli_reader
    from taskstream.streams import rebuild
    from taskstream.streams.processor import Processor
    from taskstream.streams.relay import RetryRelay

    processor = Processor(secure.model_copy(update={"processor_exactly_once": True}), member_id="m")
    RetryRelay(secure, "m")
    BrokerProbe(secure)._reader()
    cli_reader(secure, "events")
    rebuild._reader(secure, "taskstream-state-live")
    consumers = [c for kind, c in recorded if kind == "consumer"]
    assert len(consumers) >= 5
    assert {c.get("isolation.level") for c in consumers} == {"read_committed"}, consumers
    [transactional] = [c for kind, c in recorded if kind == "producer" and c.get("transactional.id")]
    assert transactional["transactional.id"] == "sec-processor-m" and transactional["client.id"] == "m"
    assert transactional["transaction.timeout.ms"] == secure.processor_transaction_timeout_ms
    assert processor.runtime._producer is None  # dead letters: a plain producer of the runtime, made when needed
    at_least_once = Processor(secure.model_copy(update={"processor_exactly_once": False}), member_id="n")
    assert at_least_once.runtime._producer is at_least_once.producer
    assert not any(c.get("transactional.id") for kind, c in recorded if kind == "producer" and c["client.id"] == "n")


def test_a_client_that_cannot_be_made_is_broker_unavailable_without_secrets(tmp_path: Path) -> None:
    s = Settings(kafka_security_protocol="SSL", kafka_ssl_ca_location=tmp_path / "no-such-ca.pem",
                 kafka_sasl_password=SecretStr(PASSWORD))
    with pytest.raises(BrokerUnavailable, match="could not create Kafka producer") as err:
        kafka.producer(s, "p")
    assert PASSWORD not in str(err.value)


def test_redact_hides_secret_values() -> None:
    config = {"sasl.password": PASSWORD, "ssl.keystore.password": "ks", "client.id": "c"}
    assert kafka.redact(f"bad {PASSWORD} and ks for c", config) == "bad ********** and ********** for c"


# ----------------------------------------------------------------- registry


def test_registry_url_credentials_move_to_a_header_and_never_show() -> None:
    assert redact_url("https://user:pa%40ss@registry.example:8081/base?token=x#f") == "https://registry.example:8081/base"
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503, text="down")

    reg = SchemaRegistry("https://user:pa%40ss@registry.example:8081")
    reg._client = httpx.Client(transport=httpx.MockTransport(answer), auth=reg._client.auth,
                               headers=reg._client.headers)
    with pytest.raises(BrokerUnavailable) as err:
        reg.schema(1)
    assert "pa@ss" not in str(err.value) and "pa%40ss" not in str(err.value) and "user" not in str(err.value)
    assert "registry.example:8081" in str(err.value)
    assert seen[0].headers["Authorization"].startswith("Basic ")
    assert "user" not in str(seen[0].url)


def test_registry_from_settings_uses_basic_or_bearer_auth(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    bearer = SchemaRegistry.from_settings(
        Settings(schema_registry_url="https://r.example", schema_registry_token_file=token)
    )
    assert bearer._client.headers["Authorization"] == "Bearer tok-123"
    basic = SchemaRegistry.from_settings(Settings(schema_registry_url="https://r.example", schema_registry_username="u",
                                                  schema_registry_password=SecretStr("p")))
    assert isinstance(basic._client.auth, httpx.BasicAuth)


def test_dev_children_get_the_secret_values_not_their_masks(monkeypatch) -> None:
    from taskstream.cli.dev import settings_env

    s = Settings(
        kafka_sasl_password=SecretStr(PASSWORD), kafka_config={"sasl.oauthbearer.client.secret": SecretStr("c")}
    )
    env = settings_env(s)
    assert env["TASKSTREAM_KAFKA_SASL_PASSWORD"] == PASSWORD
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    again = Settings()
    assert again.kafka_sasl_password.get_secret_value() == PASSWORD
    assert again.kafka_config["sasl.oauthbearer.client.secret"].get_secret_value() == "c"


def test_a_delivery_error_is_outcome_unknown_only_where_the_broker_may_have_written_the_record() -> None:
    from confluent_kafka import KafkaError, KafkaException

    from taskstream.schemas import BrokerUnavailable

    maybe = [KafkaError._MSG_TIMED_OUT, KafkaError._PURGE_INFLIGHT, KafkaError.REQUEST_TIMED_OUT,
             KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND]
    no = [KafkaError._PURGE_QUEUE, KafkaError.MSG_SIZE_TOO_LARGE, KafkaError._FATAL, KafkaError.PRODUCER_FENCED,
          KafkaError.NOT_ENOUGH_REPLICAS, KafkaError._QUEUE_FULL]
    assert [kafka.outcome_unknown(KafkaError(c)) for c in maybe] == [True] * len(maybe)
    assert [kafka.outcome_unknown(KafkaError(c)) for c in no] == [False] * len(no)
    wrapped = BrokerUnavailable("produce failed")
    wrapped.__cause__ = KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT))
    assert kafka.outcome_unknown(wrapped) and not kafka.outcome_unknown(None)


def test_a_timed_out_record_never_given_a_partition_was_never_sent() -> None:
    """The client never learnt where the topic lives (a broker never reached): not written, not "unknown"."""
    from confluent_kafka import KafkaError

    from taskstream.schemas import Settings

    s = Settings(bootstrap_servers="127.0.0.1:1", prefix="never", metrics_port=0)
    client = kafka.producer(s, "never", {"message.timeout.ms": 200})
    reports: list = []
    client.produce("never.events", b"v", b"k", on_delivery=lambda err, msg: reports.append((err, msg)))
    client.flush(5)
    (err, msg), = reports
    assert err.code() == KafkaError._MSG_TIMED_OUT and kafka.outcome_unknown(err)
    assert not kafka.outcome_unknown(err, msg)


def test_a_consumer_group_protocol_member_leaves_its_timeouts_to_the_group(recorded) -> None:
    """librdkafka refuses session.timeout.ms, heartbeat.interval.ms and partition.assignment.strategy with
    group.protocol=consumer (KIP-848): the factory leaves them out, overrides included; classic keeps them."""
    kafka.consumer(Settings(session_timeout_ms=2000, group_protocol="consumer"), "c", "g",
                   {"session.timeout.ms": 30_000, "fetch.wait.max.ms": 5})
    kafka.consumer(Settings(session_timeout_ms=2000, group_protocol="classic"), "c", "g")
    (_, new), (_, classic) = recorded
    assert new["group.protocol"] == "consumer" and new["fetch.wait.max.ms"] == 5
    assert not set(kafka.BROKER_SIDE_GROUP_PROPERTIES) & set(new)
    assert "group.protocol" not in classic and classic["session.timeout.ms"] == 2000
    assert classic["partition.assignment.strategy"] == "cooperative-sticky"
    assert kafka.group_timeouts(Settings(session_timeout_ms=2000)) == {
        "consumer.session.timeout.ms": "2000", "consumer.heartbeat.interval.ms": "500"}


def test_a_consumer_config_under_kip_848_is_one_librdkafka_accepts() -> None:
    """The real client class takes the config (it refuses a broker-side property with _INVALID_ARG)."""
    kafka.consumer(Settings(bootstrap_servers="127.0.0.1:1"), "c", "g", {"heartbeat.interval.ms": 100}).close()
