"""The ACL set of one principal per component (schemas/acls.py), its renderings (`taskstream acls plan`), the
SASL_SSL option of the dev broker, and how refused TLS or SASL is worded; the real broker's verdicts are in
tests/integration/test_kafka_security.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import KafkaError

from taskstream.cli import broker
from taskstream.cli.acls import kafka_acls_command, rpk_command
from taskstream.cli.main import main as cli
from taskstream.schemas import Settings, Topics
from taskstream.schemas.acls import Acl, Principals, acls, transactional_id_prefix
from taskstream.schemas.kafka import security_problem

PRINCIPALS = Principals(api="User:api", processor="User:processor", executor="User:executor")
TOPICS = Topics("ts")
EVERY = [TOPICS.events, TOPICS.state, *TOPICS.all_ready, *TOPICS.all_retry, TOPICS.dlq, TOPICS.heartbeats,
         TOPICS.admin, TOPICS.workers]


def granted(principal: str, operation: str) -> set[tuple[str, str, str]]:
    return {(a.kind, a.name, a.pattern) for a in acls(TOPICS, PRINCIPALS)
            if a.principal == principal and a.operation == operation}


def covers(grants: set[tuple[str, str, str]], topic: str) -> bool:
    return any(kind == "topic" and (name == topic or (pattern == "prefixed" and topic.startswith(name)))
               for kind, name, pattern in grants)


def test_no_component_may_write_the_admin_topic() -> None:
    for principal in (PRINCIPALS.api, PRINCIPALS.processor, PRINCIPALS.executor):
        assert not covers(granted(principal, "write"), TOPICS.admin), principal


def test_the_executor_reads_ready_topics_and_writes_events_heartbeats_and_the_dlq_only() -> None:
    assert [t for t in EVERY if covers(granted("User:executor", "read"), t)] == TOPICS.all_ready
    assert [t for t in EVERY if covers(granted("User:executor", "write"), t)] == [TOPICS.events, TOPICS.dlq,
                                                                                   TOPICS.heartbeats, TOPICS.workers]
    assert granted("User:executor", "read") >= {("group", TOPICS.executor_group, "literal")}
    assert not [g for g in granted("User:executor", "read") if g[0] == "group" and g[1] != TOPICS.executor_group]


def test_the_api_writes_events_only_and_reads_what_it_serves() -> None:
    assert [t for t in EVERY if covers(granted("User:api", "write"), t)] == [TOPICS.events]
    assert [t for t in EVERY if covers(granted("User:api", "read"), t)] == [TOPICS.events, TOPICS.state, TOPICS.admin,
                                                                          TOPICS.workers]
    assert not [g for g in granted("User:api", "read") if g[0] == "group"]  # it joins no group


def test_the_processor_owns_its_topics_groups_and_transactional_ids() -> None:
    writes = granted("User:processor", "write")
    for topic in (TOPICS.events, TOPICS.state, *TOPICS.all_ready, *TOPICS.all_retry, TOPICS.dlq):
        assert covers(writes, topic), topic
    assert not covers(writes, TOPICS.heartbeats) and not covers(writes, TOPICS.workers)
    assert ("transactional_id", transactional_id_prefix(TOPICS), "prefixed") in writes
    assert {("group", TOPICS.processor_group, "literal"), ("group", TOPICS.relay_group, "literal")} <= granted(
        "User:processor", "read")


def test_principals_are_distinct_and_well_formed() -> None:
    with pytest.raises(ValueError, match="principals of their own"):
        Principals(api="User:x", processor="User:x", executor="User:y")
    with pytest.raises(ValueError, match="User:<name>"):
        Principals(api="api", processor="User:p", executor="User:e")


def test_the_commands_that_create_an_acl() -> None:
    prefixed = Acl("User:executor", "topic", "ts.ready.", "prefixed", "read")
    assert kafka_acls_command(prefixed).endswith(
        "--allow-principal User:executor --operation Read --topic ts.ready. --resource-pattern-type prefixed")
    assert rpk_command(prefixed) == ("rpk security acl create --allow-principal User:executor --operation read "
                                     "--topic ts.ready. --resource-pattern-type prefixed")
    cluster = Acl("User:api", "cluster", "kafka-cluster", "literal", "idempotent_write")
    assert kafka_acls_command(cluster).endswith("--operation IdempotentWrite --cluster")
    assert rpk_command(cluster).endswith("--operation idempotent_write --cluster")


def test_acls_plan_prints_the_set_as_json(monkeypatch) -> None:
    monkeypatch.setenv("TASKSTREAM_PREFIX", "ts")
    out = CliRunner().invoke(cli, ["acls", "plan", "--format", "json", "--principal-api", "User:api",
                                   "--principal-processor", "User:processor", "--principal-executor", "User:executor"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert len(rows) == len(acls(TOPICS, PRINCIPALS))
    assert {"principal": "User:api", "resource_type": "topic", "resource_name": "ts.events", "pattern_type": "literal",
            "operation": "write", "permission": "allow", "host": "*"} in rows
    bad = CliRunner().invoke(cli, ["acls", "plan", "--principal-api", "User:x", "--principal-processor", "User:x"])
    assert bad.exit_code == 2 and "principals of their own" in bad.output


def test_the_dev_broker_can_listen_with_sasl_ssl_instead_of_plaintext(tmp_path: Path) -> None:
    security = broker.ListenerSecurity(keystore=tmp_path / "k.pem", truststore=tmp_path / "ca.pem",
                                       users={"admin": "a1", "api": "b2"})
    text = broker.server_properties(9092, 9093, Path("/x")) + security.properties(9092, 9093)
    props = dict(line.split("=", 1) for line in text.splitlines() if line)  # the last value wins, as in Java
    assert props["listeners"] == "SASL_SSL://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["advertised.listeners"] == "SASL_SSL://127.0.0.1:9092"
    assert props["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL"
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"].split(";")[0] == "User:admin"
    assert security.format_args() == ["--add-scram", "SCRAM-SHA-512=[name=admin,password=a1]",
                                      "--add-scram", "SCRAM-SHA-512=[name=api,password=b2]"]
    assert security.client_settings("api")["kafka_sasl_username"] == "api"
    with pytest.raises(ValueError, match="admin"):
        broker.ListenerSecurity(tmp_path, tmp_path, {"api": "b2"}).properties(1, 2)


def test_refused_credentials_and_untrusted_certificates_are_named() -> None:
    s = Settings(bootstrap_servers="k:9093", kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                 kafka_sasl_username="executor", kafka_ssl_ca_location=Path("/etc/ca.pem"))
    sasl = KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: Authentication failed during "
                      "authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512")
    assert security_problem(s, sasl).startswith(
        "Kafka at k:9093 refused the SASL credentials of user 'executor' (SCRAM-SHA-512): wrong password")
    tls = KafkaError(KafkaError._SSL, "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed")
    assert security_problem(s, tls).startswith(
        "TLS with Kafka at k:9093 failed: the broker's certificate is not trusted (not signed by a CA of "
        "TASKSTREAM_KAFKA_SSL_CA_LOCATION=/etc/ca.pem")
    assert security_problem(s, KafkaError(KafkaError._TRANSPORT, "Connection refused")) is None
    assert security_problem(s, KafkaError(KafkaError._SSL, "SSL handshake failed: Disconnected")) is None
