"""The manager starts runners only through its placement and talks to them only through the connection it returns."""

from __future__ import annotations

from models_app.serving.manager import EngineManager
from models_app.serving.placement import LocalPlacement

from .conftest import FRANCE, GREEDY, collect, llama_spec


class CountingPlacement(LocalPlacement):
    """A local placement that remembers what it started and how many messages went through."""

    def __init__(self):
        super().__init__()
        self.started: list[tuple[str, str | None]] = []
        self.connections = []

    def start(self, name, spec, *, log_level, spare_engine=None):
        connection = super().start(name, spec, log_level=log_level, spare_engine=spare_engine)
        self.started.append((name, spec.name if spec else None))
        sent = []
        real_send = connection.send

        def send(message):
            sent.append(type(message).__name__)
            real_send(message)

        connection.send = send
        self.connections.append((connection, sent))
        return connection


def test_a_load_and_a_chat_go_through_the_placement_it_was_given(gguf_path):
    placement = CountingPlacement()
    manager = EngineManager(memory_budget_mb=16_000, max_loaded_models=4, default_keep_alive_s=300,
                            load_timeout_s=240, shutdown_timeout_s=10, placement=placement)
    try:
        spec = llama_spec(gguf_path)
        info = manager.load(spec)
        assert placement.started == [(f"beautyai-runner-{spec.name}", spec.name)]
        connection, sent = placement.connections[0]
        assert info.pid == connection.pid and connection.alive()
        text, _, final = collect(manager.generate(spec.name, FRANCE, GREEDY))
        assert final.kind == "done" and "Paris" in text and sent == ["Generate"]
        manager.unload(spec.name)
        assert sent == ["Generate", "Shutdown"] and not connection.alive()
    finally:
        manager.shutdown()
