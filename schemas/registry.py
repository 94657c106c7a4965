"""A client of a Confluent-compatible schema registry (Redpanda's, Confluent's, Apicurio's ccompat API).

Used only by ``codec`` for the Confluent wire format: ``register`` gives the
id of today's schema of a record type (written after the ``00`` magic byte),
``schema`` the writer schema behind an id found in a record. Both answers
never change for an id, so they are cached for the life of the process.
httpx errors are mapped here: a registry that cannot be reached, or answers
5xx, is ``BrokerUnavailable`` (transient); an id it does not know is
``DecodeError`` (the record is unreadable); a schema it refuses (409
incompatible, 422 invalid) is ``SchemaRejected``.

Credentials (basic auth in the URL or from settings, a bearer token) go in
request headers only; every message names the registry by ``redact_url``
of its URL, never with a user, password or query string in it.
"""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpx

from .errors import BrokerUnavailable, DecodeError, TaskstreamError
from .settings import Settings

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class SchemaRejected(TaskstreamError):
    """The registry refused a schema (incompatible with the subject's earlier versions, or invalid)."""


def redact_url(url: str) -> str:
    """``url`` without user info, query or fragment: what a message may show of it."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<schema registry url>"


class SchemaRegistry:
    """``POST /subjects/<subject>/versions`` and ``GET /schemas/ids/<id>``, cached."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, client: httpx.Client | None = None,
                 username: str | None = None, password: str | None = None, token: str | None = None,
                 verify: str | bool = True) -> None:
        parts = urlsplit(url)
        if parts.username is not None and username is None:  # https://user:pass@host: credentials go in a header
            username, password = unquote(parts.username), unquote(parts.password or "")
        self.url = redact_url(url).rstrip("/")
        headers = {"Accept": CONTENT_TYPE}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        auth = httpx.BasicAuth(username, password or "") if username is not None and token is None else None
        self._client = client or httpx.Client(timeout=timeout_s, headers=headers, auth=auth, verify=verify,
                                              trust_env=False)
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, Any] = {}
        self._lock = threading.Lock()

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            response = self._client.request(method, self.url + path, **kw)
        except httpx.HTTPError as exc:
            raise BrokerUnavailable(f"schema registry {self.url} unreachable: {exc}") from exc
        if response.status_code >= 500:
            raise BrokerUnavailable(f"schema registry {self.url}: HTTP {response.status_code} {response.text[:200]}")
        return response

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        """The id of ``schema`` under ``subject``, registering it as a new version if it is not there yet."""
        text = json.dumps(schema, separators=(",", ":"), sort_keys=True)
        key = (subject, text)
        if (cached := self._ids.get(key)) is not None:
            return cached
        response = self._call(
            "POST", f"/subjects/{quote(subject, safe='')}/versions",
            content=json.dumps({"schema": text, "schemaType": "AVRO"}), headers={"Content-Type": CONTENT_TYPE},
        )
        if response.status_code != 200:
            raise SchemaRejected(
                f"schema registry refused {subject}: HTTP {response.status_code} {response.text[:200]}")
        try:
            schema_id = int(response.json()["id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BrokerUnavailable(f"schema registry {self.url}: unexpected answer {response.text[:200]!r}") from exc
        with self._lock:
            self._ids[key] = schema_id
            self._schemas.setdefault(schema_id, schema)
        return schema_id

    def schema(self, schema_id: int) -> Any:
        """The schema (parsed JSON) registered under ``schema_id``; ``DecodeError`` if there is none."""
        if (cached := self._schemas.get(schema_id)) is not None:
            return cached
        response = self._call("GET", f"/schemas/ids/{schema_id}")
        if response.status_code == 404:
            raise DecodeError(f"schema id {schema_id} unknown to the schema registry {self.url}")
        if response.status_code != 200:
            raise BrokerUnavailable(f"schema registry {self.url}: HTTP {response.status_code} {response.text[:200]}")
        try:
            body = response.json()
            if body.get("schemaType", "AVRO") != "AVRO":
                raise DecodeError(f"schema id {schema_id} is a {body['schemaType']} schema, not Avro")
            schema = json.loads(body["schema"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DecodeError(f"schema id {schema_id}: unreadable registry answer {response.text[:200]!r}") from exc
        with self._lock:
            self._schemas[schema_id] = schema
        return schema

    @classmethod
    def from_settings(cls, settings: Settings) -> SchemaRegistry:
        """The registry at ``settings.schema_registry_url`` with the auth and CA settings."""
        ca = settings.schema_registry_ca_location
        if settings.schema_registry_url is None:
            raise ValueError("schema_registry_url is not set")
        return cls(settings.schema_registry_url, username=settings.schema_registry_username,
                   password=settings.secret("schema_registry_password"), token=settings.secret("schema_registry_token"),
                   verify=str(ca) if ca is not None else True)

    def close(self) -> None:
        self._client.close()
