"""Flags for the addresses and ports every command takes from ``TASKSTREAM_*`` settings.

Each flag shows its environment variable in ``--help`` and, when given,
sets that variable for this process and the components it starts, so the
flag and the variable are one setting (``Settings`` reads the environment)
and a flag given on the command line wins over the variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from taskstream.schemas.settings import DEFAULT_BOOTSTRAP


def _setting(variable: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def put(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            os.environ[variable] = str(value)
        return value

    return put


def setting_option(flag: str, variable: str, help: str, type: Any = str) -> Callable[[Any], Any]:
    """``flag`` for the setting of environment variable ``variable`` (see the module docstring)."""
    # The variable is read by ``Settings`` (which also takes "null" for "off"), not by click: the flag only
    # overrides it.
    return click.option(flag, default=None, type=type, expose_value=False, is_eager=True,
                        callback=_setting(variable), help=f"{help}  [env var: {variable}]")


BOOTSTRAP = setting_option("--bootstrap-servers", "TASKSTREAM_BOOTSTRAP_SERVERS",
                           f"Kafka bootstrap servers, host:port[,host:port...] (default {DEFAULT_BOOTSTRAP}; "
                           "`dev` starts its own node unless this is given)")
PREFIX = setting_option("--prefix", "TASKSTREAM_PREFIX", "topic name prefix (default taskstream)")
GRPC_PORT = setting_option("--grpc-port", "TASKSTREAM_GRPC_PORT",
                           "gRPC port on 127.0.0.1 (`dev`: 50051; `api`: off unless set; 0: a free port)", int)
METRICS_PORT = setting_option("--metrics-port", "TASKSTREAM_METRICS_PORT",
                              "Prometheus /metrics port of the processor and executors (0: off)", int)


def broker_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--bootstrap-servers`` and ``--prefix``: what every command that talks to Kafka takes."""
    return BOOTSTRAP(PREFIX(command))
