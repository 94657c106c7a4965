"""The error tree of taskstream (STYLE §3).

- ``TaskstreamError``: base of everything we raise on purpose.
  - ``CommandRejected``: a command impossible in the task's state (HTTP 409).
    - ``StaleVersion``: a conditional change at a version the task is no
      longer at (HTTP 412).
  - ``NotFound``: no such task (HTTP 404).
  - ``ValidationError``: bad input; names the field (HTTP 422).
  - ``TooLarge``: a request whose event would not fit in the log (HTTP 413).
  - ``DecodeError``: bytes that are not a message we know; the message goes
    to the dead-letter topic, the consumer goes on.
  - ``BrokerUnavailable``: the Kafka cluster cannot be reached or refused a
    write (HTTP 503; callers may retry).
    - ``RecordRefused``: the broker refused one record for good (too large,
      invalid); retrying the same record cannot help.
    - ``WriteOutcomeUnknown``: the broker did not answer a write in time and
      may have written it all the same (HTTP 504; retry with the same
      ``Idempotency-Key`` to learn the outcome).
    - ``TopicMismatch``: existing topics differ from the catalogue (partition
      count, cleanup policy, retention, size limit); a component refuses to
      start on them.
    - ``SecurityRefused``: the cluster refused this process's TLS or SASL
      settings (an untrusted certificate, wrong credentials); retrying with
      the same settings cannot help, so a component refuses to start.

Handlers signal outcomes with ``taskstream.executors.PermanentError`` (no
more attempts) or any other exception (the attempt failed; retried per
policy). Third-party exceptions are mapped to these where they enter.
"""


class TaskstreamError(Exception):
    """Base class of taskstream's own errors."""


class CommandRejected(TaskstreamError):
    pass


class NotFound(TaskstreamError):
    pass


class StaleVersion(CommandRejected):
    """A conditional change named a version the task is no longer at (HTTP 412, gRPC ABORTED)."""

    def __init__(self, message: str, version: int) -> None:
        super().__init__(message)
        self.version = version


class ValidationError(TaskstreamError):
    """Bad input: ``violations`` lists every ``(field, message)`` found; ``field``/``message`` are the first."""

    def __init__(self, field: str, message: str, *more: tuple[str, str]) -> None:
        self.violations = [(field, message), *more]
        super().__init__("; ".join(f"{f}: {m}" for f, m in self.violations))
        self.field = field
        self.message = message

    @classmethod
    def of(cls, violations: list[tuple[str, str]]) -> "ValidationError":
        """One error naming every violation (at least one)."""
        return cls(*violations[0], *violations[1:])


class TooLarge(TaskstreamError):
    """A request whose event would not fit in the log (HTTP 413); ``field`` names the part that makes it big."""

    def __init__(self, field: str, size: int, limit: int) -> None:
        super().__init__(f"{field}: the task encodes to {size} bytes, more than the event log takes ({limit})")
        self.field = field
        self.size = size
        self.limit = limit


class DecodeError(TaskstreamError):
    pass


class BrokerUnavailable(TaskstreamError):
    pass


class RecordRefused(BrokerUnavailable):
    pass


class WriteOutcomeUnknown(BrokerUnavailable):
    """A write whose answer never came (timed out, or purged in flight): the broker may have written it."""


class TopicMismatch(BrokerUnavailable):
    """Existing topics differ from the catalogue; ``problems`` names each topic, setting, value and expectation."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("the topics differ from what taskstream needs: " + "; ".join(problems)
                         + " (change those topics' settings, or use another TASKSTREAM_PREFIX)")
        self.problems = list(problems)


class SecurityRefused(BrokerUnavailable):
    """The cluster refused this process's TLS or SASL settings; the message names the cause and the settings."""
