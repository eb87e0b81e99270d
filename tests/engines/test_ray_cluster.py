"""Runners on a Ray cluster (BEAUTYAI_PLACEMENT=ray), with Ray's own multi-node harness.

`ray.cluster_utils.Cluster` starts a head and further nodes as real Ray processes on this machine,
each with its own resources; two real daphne web processes share the test database and the cluster.
Every Ray process and every runner listens on 127.0.0.1 only, and the cluster stops with the module.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from inference_app.models import ChatMessage
from models_app import services
from models_app.serving.cluster import ClusterEngineManager
from models_app.serving.engines.bundled import bundled_gguf_path
from models_app.serving.engines.contract import EngineLoadError, GenerationParams, LoadSpec
from models_app.serving.manager import MemoryBudgetError
from models_app.serving.ray_placement import RayPlacement, actor_name
from models_app.bootstrap import bundled_entries
from tests.envelope import assert_error
from tests.servers import read_events, start_server, stop_server

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
MODEL = "ray-smollm2"
ACCEL = "beautyai_test_accel"  # a custom resource only the second node has
LONG_PROMPT = "Write the numbers from 1 to 1000, separated by commas."  # the bundled model writes on and on


def wait_for(condition, timeout: float = 60.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture(scope="module")
def ray_cluster():
    # Every Ray node binds 127.0.0.1 (Ray reads this when it starts a node).
    before = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray.cluster_utils import Cluster

    small = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False})
    accel_node = cluster.add_node(**small, resources={ACCEL: 1})
    # This test process is a web process too (the manager tests below): its runners import the project.
    ray.init(address=cluster.address, namespace="beautyai", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}})
    cluster.accel_node = accel_node
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if before is None:
            os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        else:
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = before


def runner_actors(model: str) -> list[str]:
    import ray

    return [name for name in ray.util.list_named_actors() if name.startswith(f"{model}@")]


def loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def pids_mapping(path: str, web_pids: list[int]) -> set[int]:
    """Processes of the cluster's nodes (their workers) and of the web processes (with anything they
    spawned) that map ``path``; not this test process's own runners, which other tests may have started."""
    raylets = [p for p in psutil.Process().children(recursive=True) if "raylet" in p.name()]
    web = [psutil.Process(pid) for pid in web_pids]
    pids = set()
    for process in [*web, *(c for p in [*raylets, *web] for c in p.children(recursive=True))]:
        try:
            if path in Path(f"/proc/{process.pid}/maps").read_text():
                pids.add(process.pid)
        except OSError:
            pass
    return pids


def register(ray_resources: dict, name: str = MODEL):
    config = dict(bundled_entries()["smollm2-135m-instruct"])
    config["parameters"] = {**config.get("parameters", {}), "ray_resources": ray_resources}
    return services.registry_add(name=name, config=config)


@pytest.fixture
def web(ray_cluster, tmp_path, make_user, client_for):
    """Starts daphne web processes placing runners on the cluster; each is (process, url)."""
    key = client_for(make_user(superuser=True)).raw_key
    started = []

    def start(label: str):
        process, url = start_server(tmp_path / f"{label}.log", env={
            "BEAUTYAI_PLACEMENT": "ray", "RAY_ADDRESS": ray_cluster.address,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
        started.append(process)
        return process, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=180)

    yield start
    for process in started:
        if process.poll() is None:
            stop_server(process)


def test_two_web_processes_share_one_runner_placed_on_the_node_with_its_resource(ray_cluster, web):
    model = register({ACCEL: 1})
    process_a, a = web("a")
    process_b, b = web("b")

    # Both web processes load at once: one runner actor on the cluster.
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda client: client.post(f"/models/{MODEL}/load", json={}), (a, b)))
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    assert len(runner_actors(MODEL)) == 1

    status = b.get(f"/models/{MODEL}/status").json()["data"]
    assert status["status"] == "loaded"
    assert status["node_id"] == ray_cluster.accel_node.node_id and status["node_address"] == "127.0.0.1"
    runner_pid = status["pid"]
    assert pids_mapping(model.model_id, [process_a.pid, process_b.pid]) == {runner_pid}, "one copy in the cluster"

    # Nothing Ray started (nor the runner's own channel) listens beyond loopback.
    ours = psutil.Process().children(recursive=True)
    listening = {(c.laddr.ip, p.pid) for p in ours for c in p.net_connections(kind="inet") if c.status == "LISTEN"}
    assert listening and all(loopback(ip) for ip, _ in listening), listening
    assert runner_pid in {pid for _, pid in listening}

    reply = b.post("/inference/chat", json={"model_name": MODEL, "message": "Say hello.",
                                            "generation_config": {"max_tokens": 8, "temperature": 0}})
    assert reply.status_code == 200, reply.text
    assert reply.json()["response"]

    # Idle time counts from the last use on any web process.
    assert a.get(f"/models/{MODEL}/status").json()["data"]["last_used_at"] == \
        b.get(f"/models/{MODEL}/status").json()["data"]["last_used_at"]

    # A long stream through A (about 30 s to run out here); A is killed mid-stream.
    with a.stream("POST", "/inference/chat", json={
            "model_name": MODEL, "message": LONG_PROMPT, "stream": True,
            "generation_config": {"max_tokens": 1500, "temperature": 0}}) as stream:
        # Held until A is gone: a line iterator dropped here would close the connection to A, and A would
        # cancel (and store) the reply itself if it saw that before the kill.
        lines = stream.iter_lines()
        seen = read_events(stream, stop_after=1, lines=lines)
        assert seen[-1][0] == "delta"
        process_a.send_signal(signal.SIGKILL)
        process_a.wait(30)
    # The runner cancels the generation of the connection that closed instead of running it out,
    wait_for(lambda: b.get(f"/models/{MODEL}/status").json()["data"]["active_requests"] == 0, timeout=10)
    # B stores the reply A was streaming, once, as cancelled: what the runner generated up to the cancel.
    session_id, shown = seen[0][1]["session_id"], seen[-1][1]["content"]
    replies = ChatMessage.objects.filter(session_id=session_id, role="assistant")
    stored = wait_for(replies.first, timeout=30)
    assert stored.finish_reason == "cancelled" and stored.stats["finish_reason"] == "cancelled"
    assert stored.content.strip() and stored.content.startswith(shown), (shown, stored.content)
    assert 0 < stored.completion_tokens < 1500
    assert list(ChatMessage.objects.filter(session_id=session_id).values_list("role", flat=True)) == \
        ["user", "assistant"]
    # and keeps serving B.
    reply = b.post("/inference/chat", json={"model_name": MODEL, "message": "Say hello again.",
                                            "generation_config": {"max_tokens": 8, "temperature": 0}})
    assert reply.status_code == 200, reply.text
    assert b.get(f"/models/{MODEL}/status").json()["data"]["pid"] == runner_pid

    detailed = b.get("/system/status", params={"detailed": "true"}).json()
    [row] = [r for r in detailed["model_info"]["runners"] if r["model_name"] == MODEL]
    assert row["node_id"] == ray_cluster.accel_node.node_id and row["rss_mb"] > 0

    # An unload through B ends the runner for everyone and frees its process.
    assert b.post(f"/models/{MODEL}/unload").status_code == 200
    assert b.get(f"/models/{MODEL}/status").json()["data"]["status"] == "unloaded"
    wait_for(lambda: not psutil.pid_exists(runner_pid), timeout=30)
    assert runner_actors(MODEL) == []


def test_a_lost_node_turns_its_model_to_error_and_a_reload_names_the_missing_resource(ray_cluster, web):
    doomed = ray_cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20, resources={"beautyai_doomed": 1})
    register({"beautyai_doomed": 1})
    _, b = web("b")
    assert b.post(f"/models/{MODEL}/load", json={}).status_code == 200

    events: list = []
    first = threading.Event()

    def stream():
        with b.stream("POST", "/inference/chat", json={"model_name": MODEL, "message": LONG_PROMPT,
                                                       "stream": True, "generation_config": {"max_tokens": 400}}) as r:
            lines = r.iter_lines()
            events.extend(read_events(r, stop_after=1, lines=lines))
            first.set()
            events.extend(read_events(r, lines=lines))

    reader = threading.Thread(target=stream)
    reader.start()
    assert first.wait(120)
    ray_cluster.remove_node(doomed)
    reader.join(60)
    assert not reader.is_alive(), "the stream did not end when its runner's node went away"
    assert events[-1][0] == "error", events[-1]

    status = b.get(f"/models/{MODEL}/status").json()["data"]
    assert status["status"] == "error" and "left the cluster" in status["last_error"]

    again = assert_error(b.post(f"/models/{MODEL}/load", json={}), 500, "ModelLoadError")
    assert "beautyai_doomed=1" in again["error_message"]


def test_a_model_that_fits_no_node_fails_its_load_at_once_naming_the_missing_resource(ray_cluster, web):
    register({"beautyai_nowhere": 2})
    _, b = web("b")
    started = time.monotonic()
    answer = assert_error(b.post(f"/models/{MODEL}/load", json={}), 500, "ModelLoadError")
    assert "beautyai_nowhere=2" in answer["error_message"]
    assert time.monotonic() - started < 30, "refused at once, not after the load timeout"
    assert runner_actors(MODEL) == []


def spec_on_accel(name: str, **changes) -> LoadSpec:
    return LoadSpec(name=name, engine="llama.cpp", model_id=str(bundled_gguf_path()),
                    parameters={"ray_resources": {ACCEL: 0.1}, "n_ctx": 1024}, **changes)  # a tenth: several fit


@pytest.fixture
def manager(ray_cluster):
    made = []

    def make(**limits):
        limits = {"memory_budget_mb": 100_000, "max_loaded_models": 4, **limits}
        made.append(ClusterEngineManager(placement=RayPlacement(ray_cluster.address), default_keep_alive_s=600,
                                         load_timeout_s=120, **limits))
        return made[-1]

    yield make
    for m in made:
        for info in m.loaded():
            m.unload(info.name)
        m.shutdown()


def test_a_full_node_unloads_its_least_recently_used_idle_runner_but_never_one_that_is_generating(manager):
    cluster = manager(max_loaded_models=2)
    cluster.load(spec_on_accel("evict-a"))
    cluster.load(spec_on_accel("evict-b"))
    list(cluster.generate("evict-a", [{"role": "user", "content": "Hi"}], GenerationParams(max_tokens=2)))

    cluster.load(spec_on_accel("evict-c"))  # the node holds two: b, used least recently, goes
    assert runner_actors("evict-b") == [] and cluster.status("evict-b").status == "unloaded"
    assert {i.name for i in cluster.loaded()} >= {"evict-a", "evict-c"}

    # Long replies (about 30 s each here), so both are still generating when d asks for room.
    busy = [cluster.generate(name, [{"role": "user", "content": LONG_PROMPT}],
                             GenerationParams(max_tokens=1500, temperature=0)) for name in ("evict-a", "evict-c")]
    for handle in busy:
        assert next(iter(handle)).kind == "delta"
    with pytest.raises(MemoryBudgetError, match="busy"):
        cluster.load(spec_on_accel("evict-d"))
    for handle in busy:
        handle.cancel()
    assert runner_actors("evict-a") and runner_actors("evict-c")


def test_a_changed_registry_entry_replaces_the_runner_of_the_older_revision(manager):
    cluster = manager()
    old = spec_on_accel("revised")
    cluster.load(old)
    new = spec_on_accel("revised", max_new_tokens=old.max_new_tokens + 1)
    cluster.load(new)
    assert runner_actors("revised") == [actor_name(new)] != [actor_name(old)]
    reply = list(cluster.generate("revised", [{"role": "user", "content": "Hi"}], GenerationParams(max_tokens=2)))
    assert reply[-1].kind == "done"


def test_a_runner_idle_past_its_keep_alive_is_unloaded_from_the_cluster(manager):
    cluster = manager()
    spec = spec_on_accel("short-lived")
    spec.parameters["keep_alive_seconds"] = 1
    assert cluster.load(spec).expires_at is not None
    wait_for(lambda: runner_actors("short-lived") == [], timeout=30)
    assert cluster.status("short-lived").status == "unloaded"


def test_a_load_that_fails_in_the_runner_leaves_no_actor_holding_the_name(manager, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    cluster = manager()
    spec = LoadSpec(name="broken", engine="llama.cpp", model_id=str(broken),
                    parameters={"ray_resources": {ACCEL: 0.1}})
    for _ in range(2):  # the second load meets no leftover of the first
        with pytest.raises(EngineLoadError, match="not a valid GGUF file"):
            cluster.load(spec)
    wait_for(lambda: runner_actors("broken") == [], timeout=30)


def test_a_model_whose_resources_are_taken_fails_its_load_at_the_timeout_naming_them(manager):
    cluster = manager()
    cluster.load(spec_on_accel("holder"))  # holds a tenth of the only node's accelerator resource
    impatient = manager()
    impatient.configure(memory_budget_mb=100_000, max_loaded_models=4, default_keep_alive_s=600, load_timeout_s=5)
    whole = LoadSpec(name="needs-all", engine="llama.cpp", model_id=str(bundled_gguf_path()),
                     parameters={"ray_resources": {ACCEL: 1}})
    with pytest.raises(EngineLoadError, match=f"timed out after 5s: no node had {ACCEL}=1"):
        impatient.load(whole)
    wait_for(lambda: runner_actors("needs-all") == [], timeout=30)


def test_num_gpus_places_a_runner_on_a_node_that_offers_gpus(ray_cluster, manager):
    gpu_node = ray_cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=80 * 2**20)
    try:
        cluster = manager()
        spec = LoadSpec(name="on-gpu", engine="llama.cpp", model_id=str(bundled_gguf_path()),
                        parameters={"num_gpus": 0.5, "n_ctx": 1024})
        assert cluster.load(spec).node_id == gpu_node.node_id
        cluster.unload("on-gpu")
    finally:
        ray_cluster.remove_node(gpu_node)


def test_a_runner_actor_that_crashes_is_reported_like_a_crashed_local_runner(manager):
    cluster = manager()
    pid = cluster.load(spec_on_accel("crashing")).pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: cluster.status("crashing").status == "error", timeout=30)
    assert "runner actor died" in cluster.status("crashing").last_error
    assert cluster.load(spec_on_accel("crashing")).status == "loaded"  # and it loads again
