"""`taskstream acls plan|apply`: the Kafka ACLs of one principal per component, derived from the topic layout.

``schemas.acls`` derives the set from the prefix's topics and groups;
``plan`` prints it (a table, JSON, or the equivalent ``kafka-acls.sh`` or
``rpk security acl create`` commands for a cluster taskstream may not alter
itself), ``apply`` creates what the cluster lacks, as an admin principal
(the ``TASKSTREAM_KAFKA_*`` settings of this process), and leaves other ACLs
alone. docs/security.md, "Kafka with TLS, SCRAM and ACLs", walks through it.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from typing import Any

import click

from taskstream.schemas import BrokerUnavailable, Settings, Topics, codec
from taskstream.schemas.acls import Acl, Principals, acls
from taskstream.schemas.kafka import LIBRDKAFKA_LOG, apply_acls, wait_for_broker

from ._options import broker_options

#: How long `acls apply` goes on trying a broker that refuses the connection before it says so.
REFUSED_S = 1.0

_KAFKA_ACLS_OPERATIONS = {"read": "Read", "write": "Write", "describe": "Describe",
                          "describe_configs": "DescribeConfigs", "alter_configs": "AlterConfigs",
                          "idempotent_write": "IdempotentWrite"}
_RESOURCE_FLAGS = {"topic": "--topic", "group": "--group", "transactional_id": "--transactional-id",
                   "cluster": "--cluster"}


def _resource(acl: Acl) -> list[str]:
    return ["--cluster"] if acl.kind == "cluster" else [_RESOURCE_FLAGS[acl.kind], acl.name]


def kafka_acls_command(acl: Acl) -> str:
    """The ``kafka-acls.sh`` invocation that creates ``acl`` (bootstrap and admin config left to the reader)."""
    args = ["kafka-acls.sh", "--bootstrap-server", "$BOOTSTRAP", "--command-config", "admin.properties", "--add",
            "--allow-principal", acl.principal, "--operation", _KAFKA_ACLS_OPERATIONS[acl.operation],
            *_resource(acl)]
    if acl.pattern == "prefixed":
        args += ["--resource-pattern-type", "prefixed"]
    return " ".join(a if a.startswith("$") else shlex.quote(a) for a in args)


def rpk_command(acl: Acl) -> str:
    """The ``rpk security acl create`` invocation (Redpanda) that creates ``acl``."""
    args = ["rpk", "security", "acl", "create", "--allow-principal", acl.principal, "--operation",
            acl.operation, *_resource(acl)]
    if acl.pattern == "prefixed":
        args += ["--resource-pattern-type", "prefixed"]
    return shlex.join(args)


FORMATS: dict[str, Callable[[Acl], str]] = {"table": str, "kafka-acls": kafka_acls_command, "rpk": rpk_command}


def acl_json(acl: Acl) -> dict[str, Any]:
    return {"principal": acl.principal, "resource_type": acl.kind, "resource_name": acl.name,
            "pattern_type": acl.pattern, "operation": acl.operation, "permission": "allow", "host": "*"}


def principal_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--principal-api``, ``--principal-processor``, ``--principal-executor``."""
    for role in ("executor", "processor", "api"):
        command = click.option(f"--principal-{role}", f"principal_{role}", default=f"User:taskstream-{role}",
                               show_default=True, help=f"Kafka principal of the {role}s (User:<SASL user>)")(command)
    return command


def _principals(api: str, processor: str, executor: str) -> Principals:
    try:
        return Principals(api=api, processor=processor, executor=executor)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group("acls")
def acls_group() -> None:
    """Kafka ACLs for one principal per component (API, processor, executor), derived from the topics."""


@acls_group.command("plan")
@broker_options
@principal_options
@click.option("--format", "style", type=click.Choice([*FORMATS, "json"]), default="table", show_default=True,
              help="table; json (one object a line); or the kafka-acls.sh / rpk commands that create them")
def acls_plan(principal_api, principal_processor, principal_executor, style) -> None:
    """Print the ACLs the components need (nothing is sent to Kafka)."""
    settings = Settings()
    wanted = acls(Topics(settings.prefix), _principals(principal_api, principal_processor, principal_executor))
    for acl in wanted:
        click.echo(codec.dumps_json(acl_json(acl)) if style == "json" else FORMATS[style](acl))


@acls_group.command("apply")
@broker_options
@principal_options
@click.option("--timeout", type=float, default=30.0, show_default=True, help="seconds to wait for the broker")
def acls_apply(principal_api, principal_processor, principal_executor, timeout) -> None:
    """Create the ACLs the cluster lacks (run as an admin principal: a super user of the cluster); others stay."""
    settings = Settings()
    wanted = acls(Topics(settings.prefix), _principals(principal_api, principal_processor, principal_executor))
    LIBRDKAFKA_LOG.setLevel(logging.CRITICAL)  # the error below says it once, clearly
    try:
        wait_for_broker(settings, timeout, refused_s=REFUSED_S)
        created = apply_acls(settings, wanted, timeout)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    for acl in created:
        click.echo(f"created {acl}")
    click.echo(f"{len(created)} ACLs created, {len(wanted) - len(created)} already there", err=True)


COMMANDS = [acls_group]
