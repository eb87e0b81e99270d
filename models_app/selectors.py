"""Read-only questions about the serving core, for views, admin, consumers, /v1 and system routes.

Nothing here starts the manager: a status read on an idle server must not spawn its reaper.
Actions (load, unload, generate, restart ...) are in services.py.
"""

from __future__ import annotations

from models_app import runtime


def model_status(name: str) -> dict:
    """The runtime state of one model (``unloaded`` when nothing runs it)."""
    return runtime.status(name)


def model_unloaded_status(name: str) -> dict:
    return runtime.unloaded_status(name)


def model_statuses() -> dict[str, dict]:
    """Name -> runtime state of every loaded or loading model."""
    return runtime.statuses()


def model_is_loaded(name: str) -> bool:
    return runtime.is_loaded(name)


def runners() -> list:
    """RunnerInfo of every loaded or loading model; empty while nothing has started the manager."""
    manager = runtime.manager_if_started()
    return manager.loaded() if manager is not None else []


def spare_pids() -> dict[str, int]:
    """Engine -> pid of its idle spare runner (spares are not models)."""
    manager = runtime.manager_if_started()
    return manager.spare_pids() if manager is not None else {}


def generations_in_flight() -> int:
    """Generations running or waiting, over every model."""
    return sum(info.active_requests + info.queue_depth for info in runners())


def accepting_generations() -> bool:
    """False while a restart drains the runners; new chats then answer 503."""
    return runtime.accepting_generations()


def context_length(name: str) -> int | None:
    return runtime.context_length(name)


def prompt_surely_fits(name: str, messages: list[dict], tools: list[dict] | None, room: int) -> bool:
    """True when a bound shows, without asking the runner, that the prompt takes at most ``room``
    tokens; False when only counting can tell (models_app/serving/prompt_bound.py)."""
    return runtime.prompt_fits(name, messages, tools, room)


def uses_think_tags(model) -> bool:
    return runtime.uses_think_tags(model)


def tool_call_format(model) -> str:
    return runtime.tool_call_format(model)


def response_template(model) -> dict | None:
    """The tokenizer's response template the model's replies are parsed with, or None."""
    return runtime.response_template(model)
