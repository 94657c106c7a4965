"""Cron expressions, parsed by croniter (DESIGN: a well-kept library, not a hand-written parser).

Five fields (minute hour day-of-month month day-of-week) as in crontab, or
six with a trailing seconds field (croniter's convention), e.g.
``*/5 * * * * 30`` = every 5 minutes at second 30. Times are computed in the
schedule's IANA time zone (``Europe/Paris``), so "09:00 every day" stays
09:00 across daylight-saving changes, and returned in UTC.

A step (``*/15``, ``10-40/5``) must be smaller than the number of values of
its field (60 seconds or minutes, 24 hours, 31 days, 12 months, 7 weekdays):
croniter takes any step, and ``*/99999999999999999999`` would silently
mean "at minute 0" (``check``).

An expression that fires more than once a minute (a seconds field of more
than one value, e.g. ``* * * * * *``) is refused by the API unless
``Settings.allow_second_cron`` (``check_sub_minute``): each fire is a task
and a few events through the processor, so a handful of per-second
schedules can keep it busy with nothing else.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from .errors import ValidationError

#: Name and number of values of each field, in order (the sixth, seconds, is optional).
FIELDS = (("minute", 60), ("hour", 24), ("day of month", 31), ("month", 12), ("day of week", 7), ("second", 60))


def check(expr: str, timezone: str) -> None:
    """Raise ``ValidationError`` (field ``cron`` or ``timezone``) naming what is wrong."""
    if not isinstance(expr, str) or len(expr.split()) not in (5, 6):
        raise ValidationError("cron", f"a cron expression has 5 fields (or 6 with seconds last), got {expr!r}")
    if not croniter.is_valid(expr):
        raise ValidationError("cron", f"not a valid cron expression: {expr!r}")
    for (name, size), text in zip(FIELDS, expr.split(), strict=False):
        for step in re.findall(r"/([^,]*)", text):
            if not (step.isascii() and step.isdigit() and 0 < int(step) < size):
                raise ValidationError(
                    "cron", f"{expr!r}: the {name} field's step /{step[:20]} is out of range (1 to {size - 1})")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError("timezone", f"unknown time zone: {timezone!r}") from exc


def fires_more_than_once_a_minute(expr: str) -> bool:
    """True if ``expr`` (valid) has a seconds field with more than one second in it, as croniter expands it."""
    fields = croniter(expr).expanded
    return len(fields) == 6 and (fields[5] == ["*"] or len(fields[5]) > 1)


def check_sub_minute(expr: str, *, allowed: bool) -> None:
    """Raise ``ValidationError`` naming ``cron`` if ``expr`` (valid) fires more often than once a minute."""
    if not allowed and fires_more_than_once_a_minute(expr):
        raise ValidationError(
            "cron", f"{expr!r} fires more than once a minute (its sixth field is seconds); use five fields, or a "
            "single second in the sixth, or ask the operator to set allow_second_cron"
        )


def next_fire(expr: str, timezone: str, after: datetime) -> datetime:
    """The first fire time strictly after ``after`` (aware), in UTC.

    When clocks go back, the local hour that repeats would give a job with a
    fixed hour ("30 2 * * *") two fires; like crontab, it fires once, at the
    first occurrence. Jobs whose hour field is ``*`` keep firing through both
    occurrences.
    """
    local = after.astimezone(ZoneInfo(timezone))
    nxt = croniter(expr, local).get_next(datetime)
    fixed_hour = "*" not in expr.split()[1]
    if fixed_hour and nxt.replace(tzinfo=None) == local.replace(tzinfo=None) and nxt.utcoffset() != local.utcoffset():
        nxt = croniter(expr, nxt).get_next(datetime)  # the same wall-clock time again: already fired
    fire: datetime = nxt.astimezone(UTC)  # croniter's get_next is untyped
    return fire


def first_fire(expr: str, timezone: str, start_at: datetime | None, created_at: datetime) -> datetime:
    """A new schedule's first fire time: the first at or after ``start_at`` (default: after creation)."""
    if start_at is not None and start_at > created_at:
        # "at or after start_at": step back a microsecond so a fire time equal to start_at counts.
        return next_fire(expr, timezone, start_at - timedelta(microseconds=1))
    return next_fire(expr, timezone, created_at)


def latest_fire(expr: str, timezone: str, at: datetime) -> datetime:
    """The last fire time at or before ``at`` (aware), in UTC."""
    local = (at + timedelta(microseconds=1)).astimezone(ZoneInfo(timezone))
    fire: datetime = croniter(expr, local).get_prev(datetime).astimezone(UTC)  # croniter's get_prev is untyped
    return fire
