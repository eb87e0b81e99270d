"""models_app.hub against the local hub of the ``hub_server`` fixture (no Django, no database)."""

from __future__ import annotations

import pytest

from models_app import hub
from models_app.engines.bundled import BUNDLED_GGUF_NAME

REPO = "test-org/smollm2-gguf"
SERVED_NAME = f"{REPO}/{BUNDLED_GGUF_NAME}"
MiB = 2**20


def gguf_plan() -> hub.Plan:
    return hub.plan_download(REPO, revision="main", engine="llama.cpp", quantization="Q4_1", parameters={},
                             token=None)


def fetch(plan: hub.Plan, counted: list[int], cancelled) -> None:
    hub.fetch(plan, token=None, on_bytes=counted.append, on_file_done=lambda file: None,
              on_verifying=lambda: None, cancelled=cancelled)


def test_a_cancelled_fetch_keeps_every_byte_it_counted_and_the_next_one_continues_with_a_range(hub_server):
    server = hub_server(REPO, bytes_per_second=50_000_000)
    plan = gguf_plan()
    first: list[int] = []
    with pytest.raises(hub.DownloadCancelled):
        fetch(plan, first, cancelled=lambda: sum(first) >= 3 * MiB)

    kept = hub.partial_bytes(plan)
    assert kept == sum(first) == 3 * MiB
    assert not hub.snapshot_present(REPO, revision="main", engine="llama.cpp", quantization="Q4_1", parameters={})

    second: list[int] = []
    fetch(plan, second, cancelled=lambda: False)
    assert sum(second) == plan.total_bytes - kept
    assert hub.snapshot_present(REPO, revision="main", engine="llama.cpp", quantization="Q4_1", parameters={})
    assert ("GET", f"/cdn/{SERVED_NAME}", {"Range": f"bytes={kept}-"}) in server.requests
    # Only what was in flight when the first fetch stopped reading came twice.
    assert plan.total_bytes <= server.bytes_served[SERVED_NAME] <= plan.total_bytes + MiB
    assert hub.partial_bytes(plan) == 0
