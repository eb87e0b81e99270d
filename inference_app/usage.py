"""Usage accounting and quotas.

Every generation leaves one ``UsageRecord``; quotas are read from those rows, so what the usage
route shows and what a quota counts are the same numbers.

Requests per minute is a sliding window over the records of the last 60 seconds; a generation is
recorded when it ends, so requests still running do not count yet. Tokens per day count prompt and
completion tokens since midnight UTC. A group rule limits each member separately.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone as dt_timezone

from django.contrib.auth import get_user_model
from django.db.models import Count, Exists, OuterRef, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from beautyai_site.api import errors
from beautyai_site.api.envelope import iso
from beautyai_site.sql import ReusedQuery
from inference_app.models import QuotaRule, UsageRecord

WINDOW = timedelta(minutes=1)


class QuotaExceededError(errors.RateLimitError):
    """429 with the seconds until the limit resets, sent as ``Retry-After`` by the views."""

    def __init__(self, message: str, *, details: dict, retry_after: int):
        super().__init__(message, details=details)
        self.retry_after = retry_after


def usage_record(*, user, model_name: str, transport: str, prompt_tokens: int, completion_tokens: int,
                 duration_ms: float, api_key_id: int | None = None, requested_name: str = "") -> UsageRecord:
    return UsageRecord.objects.create(
        user=user, api_key_id=api_key_id, model_name=model_name, requested_name=requested_name, transport=transport,
        prompt_tokens=max(int(prompt_tokens or 0), 0), completion_tokens=max(int(completion_tokens or 0), 0),
        duration_ms=max(float(duration_ms or 0.0), 0.0),
    )


def usage_record_reply(plan, stats: dict) -> UsageRecord:
    """The record of one reply: a chat's (REST, SSE, WebSocket, /v1), the model test's, a benchmark run's."""
    return usage_record(
        user=plan.user, api_key_id=plan.api_key_id, model_name=plan.model.name, transport=plan.transport,
        requested_name=plan.requested_name,
        prompt_tokens=stats.get("prompt_tokens") or 0, completion_tokens=stats.get("tokens_generated") or 0,
        duration_ms=stats.get("inference_time_ms") or 0.0,
    )


def rules_for(*, user, model) -> list[QuotaRule]:
    rules = QuotaRule.objects.filter(enabled=True).filter(Q(user=user) | Q(group__in=user.groups.all()))
    return list(rules.filter(Q(model__isnull=True) | Q(model=model)).select_related("model", "group"))


def _rule_details(rule: QuotaRule, *, limit: str, used: int, reset_at: datetime) -> dict:
    return {
        "rule_id": rule.pk,
        "scope": "user" if rule.user_id else "group",
        "group": rule.group.name if rule.group_id else None,
        "model_name": rule.model.name if rule.model_id else None,
        "limit": limit,
        "limit_value": getattr(rule, limit),
        "used": used,
        "reset_at": iso(reset_at),
    }


def _a_rule_for(user_id: int, model_id: int):
    # Asked of the user's row, so that each value is one parameter (what ReusedQuery takes): the rule
    # names them or one of their groups, as in ``rules_for``. The groups from the membership table
    # alone: a join to the groups' table adds only planning time.
    users = get_user_model()
    groups = users.groups.through.objects.filter(user=OuterRef(OuterRef("pk"))).values("group")
    rules = QuotaRule.objects.filter(enabled=True).filter(Q(model__isnull=True) | Q(model=model_id)).filter(
        Q(user=OuterRef("pk")) | Q(group__in=groups))
    return users.objects.filter(pk=user_id).filter(Exists(rules)).order_by().values("pk")


# Every chat asks, most callers have no rule, and Django writing the ORM query's SQL (the groups
# subquery, the joins) cost more than the database took to answer it (docs/performance.md).
_A_RULE_FOR = ReusedQuery(_a_rule_for, user_id=int, model_id=int)


def any_rule_applies(*, user, model) -> bool:
    """Whether ``rules_for`` would find a rule, with SQL written once per request thread."""
    return bool(_A_RULE_FOR.rows(user_id=user.pk, model_id=model.pk))


def quota_check(*, user, model) -> None:
    """Raises ``QuotaExceededError`` (429) when one of the caller's rules is used up for ``model``."""
    if not any_rule_applies(user=user, model=model):
        return
    now = timezone.now()
    for rule in rules_for(user=user, model=model):
        records = UsageRecord.objects.filter(user=user)
        if rule.model_id:
            records = records.filter(model_name=rule.model.name)
        if rule.requests_per_minute is not None:
            recent = records.filter(created_at__gt=now - WINDOW).order_by("created_at")
            used, limit = recent.count(), rule.requests_per_minute
            if used >= limit:
                # A slot frees when enough of the oldest counted requests have left the window.
                reset_at = recent[used - limit].created_at + WINDOW if limit else now + WINDOW
                _refuse(rule, "requests_per_minute", used, max(reset_at, now), now)
        if rule.tokens_per_day is not None:
            midnight = now.astimezone(dt_timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
            totals = records.filter(created_at__gte=midnight).aggregate(p=Sum("prompt_tokens"),
                                                                        c=Sum("completion_tokens"))
            used = (totals["p"] or 0) + (totals["c"] or 0)
            if used >= rule.tokens_per_day:
                _refuse(rule, "tokens_per_day", used, midnight + timedelta(days=1), now)


def _refuse(rule: QuotaRule, limit: str, used: int, reset_at: datetime, now: datetime) -> None:
    retry_after = max(1, math.ceil((reset_at - now).total_seconds()))
    what = "requests per minute" if limit == "requests_per_minute" else "tokens per day"
    raise QuotaExceededError(
        f"Quota exceeded: {getattr(rule, limit)} {what}; try again in {retry_after} s.",
        details={**_rule_details(rule, limit=limit, used=used, reset_at=reset_at), "retry_after_seconds": retry_after},
        retry_after=retry_after,
    )


def usage_by_day(*, user, days: int) -> dict:
    """The caller's own usage for the last ``days`` UTC days, one row per day and model."""
    since = timezone.now().astimezone(dt_timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) \
        - timedelta(days=days - 1)
    rows = (
        UsageRecord.objects.filter(user=user, created_at__gte=since)
        .annotate(day=TruncDate("created_at", tzinfo=dt_timezone.utc))
        .values("day", "model_name")
        .annotate(requests=Count("id"), prompt_tokens=Sum("prompt_tokens"),
                  completion_tokens=Sum("completion_tokens"), duration_ms=Sum("duration_ms"))
        .order_by("-day", "model_name")
    )
    usage = [
        {
            "day": row["day"].isoformat(),
            "model_name": row["model_name"],
            "requests": row["requests"],
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "total_tokens": row["prompt_tokens"] + row["completion_tokens"],
            "duration_ms": round(row["duration_ms"], 3),
        }
        for row in rows
    ]
    totals = {key: sum(row[key] for row in usage)
              for key in ("requests", "prompt_tokens", "completion_tokens", "total_tokens")}
    return {"since": since.date().isoformat(), "days": days, "usage": usage, "totals": totals}
