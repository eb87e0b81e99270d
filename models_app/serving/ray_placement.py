"""Runners on a Ray cluster (BEAUTYAI_PLACEMENT=ray): one named, detached actor per model per cluster.

Every web process, on any host, finds a loaded model's runner by name (`<model>@<revision>` in the
`beautyai` namespace) and talks to it over its own authenticated socket speaking protocol.py, the
same messages a local runner reads from its pipe. Tokens therefore cost no Ray object each: Ray
places, names, watches and ends runners; the stream goes from the actor straight to the web process
(bench/README.md, "Ray placement", has the measurement that chose this).

Who decides what:
  * Ray places an actor on a node that has its resources (`num_gpus`, `ray_resources`, the memory
    estimate as Ray memory). Before asking, `RayPlacement.start` picks the node itself: a model no
    live node can ever hold fails at once naming what is missing, and the per-node memory budget and
    model count are enforced here, evicting that node's least recently used idle runners (idle on
    every web process: the actor counts generations from all of them).
  * Concurrent loads of one model from several web processes create one actor (`get_if_exists`,
    decided by Ray's control store); an unload from any of them stops it for all: the actor tells
    every connection (`Stopping`), then it is killed.
  * A web process that dies only closes its connection: the actor cancels that connection's
    generations and keeps serving the others. Those that carried a tag (chat replies) end as orphans,
    their text kept in the actor until another web process takes them (`take_orphans`) and stores them.
  * A runner that crashes or whose node is lost closes every connection; each web process reports it
    like a crashed local runner, and records the reason in the cluster's directory actor so web
    processes that were not connected show it too.

The channel is authenticated (a random key per actor, handed out through Ray) but not encrypted, like
Ray's own traffic: the cluster belongs on a private network (docs/security.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Client, Listener

from models_app.serving import protocol as p
from models_app.serving.engines.contract import EngineLoadError, LoadSpec
from models_app.serving.engines.memory import estimate_memory_mb
from models_app.serving.hardware import gpu_memory_mb, process_memory_mb
from models_app.serving.placement import _PROJECT_ROOT, Placement, RunnerConnection

logger = logging.getLogger(__name__)

NAMESPACE = "beautyai"
DIRECTORY = "beautyai-directory"
MIB = 1024 * 1024
_WATCH_INTERVAL_S = 2.0
_INFO_TIMEOUT_S = 5.0
# Environment a runner actor needs on any node: where the project and the model files are.
_FORWARDED_ENV = ("HF_HOME", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "BEAUTYAI_DATA_DIR", "BEAUTYAI_MODEL_ROOTS",
                  "OMP_NUM_THREADS")


def revision(spec: LoadSpec) -> str:
    """What a runner was loaded from: any registry change that reaches the LoadSpec is a new revision."""
    return hashlib.sha256(json.dumps(asdict(spec), sort_keys=True, default=str).encode()).hexdigest()[:12]


def actor_name(spec: LoadSpec) -> str:
    return f"{spec.name}@{revision(spec)}"


def model_of(name: str) -> str:
    return name.rpartition("@")[0]


def requirements(spec: LoadSpec, estimate_mb: float) -> dict[str, float]:
    """The resources a runner for `spec` asks Ray for (GPU, custom resources, memory in bytes)."""
    params = spec.parameters or {}
    needs = {str(k): float(v) for k, v in (params.get("ray_resources") or {}).items()}
    if float(params.get("num_gpus") or 0) > 0:
        needs["GPU"] = float(params["num_gpus"])
    if estimate_mb > 0:
        needs["memory"] = float(int(estimate_mb * MIB))
    return needs


def _describe(needs: dict[str, float]) -> str:
    return ", ".join(f"{k}={v / MIB:.0f} MiB" if k == "memory" else f"{k}={v:g}" for k, v in sorted(needs.items()))


# -- inside the cluster ---------------------------------------------------------------------------

class RunnerActor:
    """The body of a runner actor (wrapped by `ray.remote` on first use, so importing this module
    needs no Ray). The model loads in a thread: `info` answers while it loads, `endpoint` waits."""

    def __init__(self, spec_dict: dict, log_level: str, estimate_mb: float):
        logging.getLogger().setLevel(getattr(logging, str(log_level).upper(), logging.INFO))
        import ray

        self._spec = spec_dict
        self._estimate_mb = estimate_mb
        self._node_id = ray.get_runtime_context().get_node_id()
        self._host = ray.util.get_node_ip_address()
        self._loaded = threading.Event()
        self._answer: p.Ready | p.LoadError | None = None
        self._runner = None
        self._engine = None
        self._loaded_at: float | None = None
        self._lock = threading.Lock()
        self._replies: dict = {}  # connection -> its reply function
        self._stopping: str | None = None
        self._authkey = secrets.token_bytes(32)
        self._listener: Listener | None = None
        threading.Thread(target=self._load, daemon=True, name="load").start()

    def _load(self) -> None:
        from models_app.serving.runner import _Runner, load_engine

        engine, answer = load_engine(LoadSpec(**self._spec))
        if engine is not None:
            self._engine, self._runner = engine, _Runner(engine)
            # The node's own address: the one web processes on other hosts reach it by.
            self._listener = Listener((self._host, 0), authkey=self._authkey)
            self._loaded_at = time.time()
            threading.Thread(target=self._accept, daemon=True, name="accept").start()
        self._answer = answer
        self._loaded.set()

    def endpoint(self) -> dict:
        """Where to connect once loaded, or the load's error."""
        self._loaded.wait()
        if self._runner is None:
            return {"load_error": p.encode(self._answer), "pid": os.getpid(), "node_id": self._node_id}
        return {"address": self._listener.address, "authkey": self._authkey, "pid": os.getpid(),
                "node_id": self._node_id}

    def info(self) -> dict:
        runner = self._runner
        return {
            "spec": self._spec, "node_id": self._node_id, "node_address": self._host, "pid": os.getpid(),
            "status": "loaded" if runner is not None else ("error" if self._loaded.is_set() else "loading"),
            "estimate_mb": self._estimate_mb, "memory_mb": process_memory_mb(os.getpid()),
            "gpu_memory_mb": gpu_memory_mb(os.getpid()),
            "in_flight": runner.in_flight if runner is not None else 0,
            "last_used": runner.last_used if runner is not None else None, "loaded_at": self._loaded_at,
            "ready": p.encode(self._answer) if self._answer is not None else None,
            "connections": len(self._replies), "stopping": self._stopping,
        }

    def ping(self) -> bool:
        return True

    def take_orphans(self) -> list[dict]:
        """Replies whose web process went away mid-generation, removed: each goes to one caller only."""
        runner = self._runner
        return runner.take_orphans() if runner is not None else []

    def _accept(self) -> None:
        from multiprocessing import AuthenticationError

        while self._stopping is None:
            try:
                conn = self._listener.accept()
            except AuthenticationError:
                continue  # a peer without the key: refused, keep serving
            except OSError:
                return  # the listener was closed by stop()
            _nodelay(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True, name="connection").start()

    def _serve(self, conn) -> None:
        send_lock = threading.Lock()

        def reply(message) -> None:
            with send_lock:
                try:
                    conn.send(p.encode(message))
                except (OSError, EOFError, ValueError):
                    pass  # that web process is gone; its reader below sees it and cleans up

        with self._lock:
            if self._stopping is not None:
                conn.close()
                return
            self._replies[conn] = reply
        reply(self._answer)
        try:
            while True:
                try:
                    raw = conn.recv()
                except (EOFError, OSError):
                    break
                if not self._runner.handle(raw, reply):
                    # A Shutdown from one web process is an unload for all of them.
                    threading.Thread(target=self.stop, args=("model unloaded",), daemon=True).start()
        finally:
            with self._lock:
                self._replies.pop(conn, None)
            # Its web process went away: nobody reads these replies, so the engine stops on them.
            self._runner.cancel_all(owner=reply)
            conn.close()

    def stop(self, reason: str, drain_s: float = 0.0) -> bool:
        """Ends this runner for every web process: waits up to `drain_s` for generations in flight
        (a revision being replaced), cancels the rest, tells each connection, closes them. The caller
        kills the actor afterwards (ray.kill), which also ends a load still under way."""
        deadline = time.monotonic() + drain_s
        while self._runner is not None and self._runner.in_flight and time.monotonic() < deadline:
            time.sleep(0.1)
        with self._lock:
            if self._stopping is not None:
                return False
            self._stopping = reason
            replies = list(self._replies.items())
        if self._runner is not None:
            self._runner.cancel_all()
            self._runner.stop(timeout=5.0)
        for conn, reply in replies:
            reply(p.Stopping(reason=reason))
            _shut(conn)
        if self._listener is not None:
            self._listener.close()
        return True


class Directory:
    """The cluster's memory of runners that failed (one small detached actor): a web process that
    sees a runner crash or its node vanish records why, and every web process reads it in status."""

    def __init__(self):
        self._errors: dict[str, tuple[str, float]] = {}

    def record(self, model: str, reason: str) -> None:
        self._errors[model] = (reason, time.time())

    def clear(self, model: str) -> None:
        self._errors.pop(model, None)

    def errors(self) -> dict[str, tuple[str, float]]:
        return dict(self._errors)


def _nodelay(conn) -> None:
    """Small writes (a delta per token) go out at once: with Nagle's algorithm a token could wait up
    to 40 ms for the previous one's delayed ACK (measured: bench/README.md, "Ray placement")."""
    try:
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, ValueError):
        pass


def _shut(conn) -> None:
    """Ends a multiprocessing connection so that a recv blocked in another thread returns at once
    (close() alone does not wake it on Linux)."""
    try:
        sock = socket.socket(fileno=os.dup(conn.fileno()))
    except (OSError, ValueError):
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


# -- in the web process ----------------------------------------------------------------------------

class _RayConnection(RunnerConnection):
    """A web process's side of a runner actor. The first `recv` waits (in the manager's reader thread)
    until the actor is placed and loaded, then connects; later ones read the actor's socket."""

    shared = True

    def __init__(self, actor, name: str, needs: str = ""):
        self._actor = actor
        self.name = name
        self._needs = needs
        self.pid: int | None = None
        self.node_id: str | None = None
        self._endpoint_ref = actor.endpoint.remote()
        self._conn = None
        self._failed_load = False
        self._closed = threading.Event()
        self._gone = threading.Event()
        self._stop_ref = None
        self._reason: str | None = None

    # The manager calls send from request threads and recv from its reader thread, never each from two.
    def send(self, message: p.ParentMessage) -> None:
        if isinstance(message, p.Shutdown):
            self._stop_ref = self._actor.stop.remote("model unloaded")
            return
        if self._conn is None:
            raise OSError("runner not connected")
        self._conn.send(p.encode(message))

    def recv(self) -> p.RunnerMessage:
        if self._conn is None:
            return self._connect()
        try:
            return p.decode(self._conn.recv())
        except (EOFError, OSError):
            self._gone.set()
            raise

    def _connect(self) -> p.RunnerMessage:
        import ray

        if self._failed_load:
            raise EOFError("the runner failed to load")
        # Polled, not one long wait: kill() or close() during a load must end this thread.
        while not self._closed.is_set():
            ready, _ = ray.wait([self._endpoint_ref], timeout=0.5)
            if ready:
                break
        else:
            raise EOFError("closed while loading")
        try:
            endpoint = ray.get(self._endpoint_ref)
        except ray.exceptions.RayError as exc:
            self._reason = _actor_death(exc)
            self._gone.set()
            raise EOFError(self._reason) from None
        self.pid, self.node_id = endpoint["pid"], endpoint["node_id"]
        if "load_error" in endpoint:
            self._failed_load = True
            # The actor holds the model's name: a failed one must go, or every later load would find it.
            try:
                ray.kill(self._actor, no_restart=True)
            except Exception:
                pass
            return p.decode(endpoint["load_error"])
        self._conn = Client(tuple(endpoint["address"]), authkey=endpoint["authkey"])
        _nodelay(self._conn)
        if self._closed.is_set():
            _shut(self._conn)
        threading.Thread(target=self._watch, daemon=True, name=f"ray-watch-{self.name}").start()
        return p.decode(self._conn.recv())  # the actor's Ready, sent to every new connection

    def _watch(self) -> None:
        # A node that vanishes without closing its sockets (power, network) is noticed by Ray's health
        # checks; asking the actor regularly turns that into the end of this connection within seconds.
        import ray

        while not self._gone.wait(_WATCH_INTERVAL_S):
            try:
                ray.get(self._actor.ping.remote(), timeout=_WATCH_INTERVAL_S * 5)
            except ray.exceptions.GetTimeoutError:
                continue
            except ray.exceptions.RayError as exc:
                self._reason = _actor_death(exc)
                _shut(self._conn)
                return

    def alive(self) -> bool:
        return not self._gone.is_set() and not self._closed.is_set()

    def pending_reason(self) -> str | None:
        """Why a load is still waiting: Ray has not placed the actor (its resources are taken)."""
        if self._conn is None and not self._failed_load:
            return f"no node had {self._needs or 'its resources'} free"
        return None

    @property
    def exitcode(self) -> int | None:
        return None if self.alive() else 0

    def exit_reason(self) -> str:
        if self._reason is None and not self._closed.is_set():
            # The socket closed without a word from the actor: ask Ray what became of it.
            import ray

            try:
                ray.get(self._actor.ping.remote(), timeout=_WATCH_INTERVAL_S * 5)
                self._reason = "runner closed its connection"
            except ray.exceptions.RayError as exc:
                self._reason = _actor_death(exc)
        return self._reason or "runner exited"

    def join(self, timeout: float) -> None:
        import ray

        if self._stop_ref is not None:
            ray.wait([self._stop_ref], timeout=timeout)
        else:
            self._gone.wait(timeout)

    def kill(self) -> None:
        import ray

        self._closed.set()
        try:
            ray.kill(self._actor, no_restart=True)
        except Exception:
            pass  # already gone
        self.close()

    def close(self) -> None:
        self._closed.set()
        if self._conn is not None:
            _shut(self._conn)


def _actor_death(exc: BaseException) -> str:
    text = str(exc)
    marker = "its node has died"
    if marker in text or "NodeDiedError" in type(exc).__name__:
        node = text.split("Node Id:", 1)[1].split()[0] if "Node Id:" in text else "?"
        return f"runner lost: its node {node[:12]} left the cluster"
    if "ActorUnschedulable" in type(exc).__name__:
        return "runner could not be placed on any node"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"runner actor died: {first[:300]}"


@dataclass
class Node:
    id: str
    address: str
    resources: dict[str, float]


class RayPlacement(Placement):
    """Runners as named detached actors on the Ray cluster at `address` (RAY_ADDRESS when None)."""

    shared = True

    def __init__(self, address: str | None = None, *, memory_budget_mb: float = 0, max_loaded_models: int = 0,
                 shutdown_timeout_s: float = 10.0):
        self._address = address
        self.memory_budget_mb = float(memory_budget_mb)
        self.max_loaded_models = int(max_loaded_models)
        self.shutdown_timeout_s = float(shutdown_timeout_s)
        self._init_lock = threading.Lock()
        self._answered: dict[str, dict] = {}  # each runner actor's last answer to info()
        self._actor_cls = None
        self._directory = None
        self._takes: dict[str, object] = {}  # actor name -> its take_orphans call not yet answered

    def _ray(self):
        import ray

        with self._init_lock:
            if not ray.is_initialized():
                env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PROJECT_ROOT, os.environ.get("PYTHONPATH")]))
                # An existing cluster only ("auto" finds the local one): a web process never starts its own.
                ray.init(address=self._address or os.environ.get("RAY_ADDRESS") or "auto", namespace=NAMESPACE,
                         runtime_env={"env_vars": env}, log_to_driver=False, configure_logging=False)
            if self._actor_cls is None:
                self._actor_cls = ray.remote(RunnerActor)
                self._directory = ray.remote(Directory).options(
                    name=DIRECTORY, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0).remote()
        return ray

    # -- what is on the cluster ----------------------------------------------------------------

    def nodes(self) -> list[Node]:
        ray = self._ray()
        return [Node(n["NodeID"], n["NodeManagerAddress"], dict(n["Resources"])) for n in ray.nodes() if n["Alive"]]

    def actors(self) -> dict[str, object]:
        """Runner actors by actor name (`<model>@<revision>`)."""
        ray = self._ray()
        out = {}
        for name in ray.util.list_named_actors():
            if "@" in name:
                try:
                    out[name] = ray.get_actor(name, namespace=NAMESPACE)
                except ValueError:
                    pass  # ended meanwhile
        return out

    def infos(self, model: str | None = None) -> dict[str, dict]:
        """Each runner actor's own account (status, node, memory, in flight, last use), by actor name.

        One that does not answer in time (busy threads on a loaded node) keeps its last answer, marked
        busy: it still counts against its node's budget and is never chosen for eviction. One that
        never answered is still being placed: loading, on no node yet."""
        ray = self._ray()
        actors = {n: a for n, a in self.actors().items() if model is None or model_of(n) == model}
        refs = {n: a.info.remote() for n, a in actors.items()}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=_INFO_TIMEOUT_S) if refs else ([], [])
        out = {}
        for name, ref in refs.items():
            if ref in ready:
                try:
                    out[name] = self._answered[name] = ray.get(ref)
                except ray.exceptions.RayError:
                    self._answered.pop(name, None)  # died meanwhile: not on the cluster any more
                continue
            last = self._answered.get(name)
            if last is not None:
                out[name] = {**last, "in_flight": max(1, int(last.get("in_flight") or 0))}
            else:
                out[name] = {"status": "loading", "node_id": None, "node_address": None, "pid": None, "in_flight": 0,
                             "last_used": None, "loaded_at": None, "memory_mb": 0.0, "estimate_mb": 0.0,
                             "spec": None, "ready": None, "stopping": None}
        if model is None:
            for gone in set(self._answered) - set(actors):
                self._answered.pop(gone, None)
        return out

    def take_orphans(self, timeout: float = _INFO_TIMEOUT_S) -> list[dict]:
        """The orphans of every runner actor (runner.py), each handed to this caller alone. An actor that
        does not answer within `timeout` keeps its call pending: its answer is read on the next call,
        never dropped (the actor has already removed those orphans)."""
        ray = self._ray()
        for name, actor in self.actors().items():
            if name not in self._takes:
                self._takes[name] = actor.take_orphans.remote()
        if not self._takes:
            return []
        refs = list(self._takes.values())
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        out = []
        for name, ref in list(self._takes.items()):
            if ref in ready:
                del self._takes[name]
                try:
                    out += ray.get(ref)
                except ray.exceptions.RayError:
                    pass  # the actor died: its orphans went with it
        return out

    def errors(self) -> dict[str, tuple[str, float]]:
        ray = self._ray()
        try:
            return ray.get(self._directory.errors.remote(), timeout=_INFO_TIMEOUT_S)
        except ray.exceptions.RayError:
            return {}

    def record_error(self, model: str, reason: str | None) -> None:
        self._ray()
        if reason is None:
            self._directory.clear.remote(model)
        else:
            self._directory.record.remote(model, reason)

    # -- starting and stopping ------------------------------------------------------------------

    def start(self, name: str, spec: LoadSpec | None, *, log_level: str,
              spare_engine: str | None = None) -> RunnerConnection:
        if spec is None:
            raise EngineLoadError("spare runners are not used with Ray placement")
        ray = self._ray()
        wanted = actor_name(spec)
        try:
            return _RayConnection(ray.get_actor(wanted, namespace=NAMESPACE), spec.name)
        except ValueError:
            pass  # not on the cluster yet: place it
        estimate = estimate_memory_mb(spec)
        needs = requirements(spec, estimate)
        return _RayConnection(self._place(spec, wanted, log_level, estimate, needs), spec.name, _describe(needs))

    def _place(self, spec: LoadSpec, wanted: str, log_level: str, estimate: float, needs: dict[str, float]):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # Runners of this model from an older registry revision finish what they are doing, then go.
        for old in [n for n in self.actors() if model_of(n) == spec.name and n != wanted]:
            logger.info("replacing runner %s (older registry revision)", old)
            self.stop(old, "replaced by a newer registry revision", drain_s=self.shutdown_timeout_s)
        node = self._choose_node(spec.name, needs, estimate)
        options = {
            "name": wanted, "namespace": NAMESPACE, "lifetime": "detached", "get_if_exists": True,
            "max_restarts": 0, "max_concurrency": 64, "num_cpus": 0,
            "num_gpus": needs.get("GPU", 0),
            "resources": {k: v for k, v in needs.items() if k not in ("GPU", "memory")},
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node.id, soft=False),
        }
        if "memory" in needs:
            options["memory"] = needs["memory"]
        self.record_error(spec.name, None)
        return self._actor_cls.options(**options).remote(asdict(spec), log_level, estimate)

    def _choose_node(self, model: str, needs: dict[str, float], estimate_mb: float) -> Node:
        """A live node that can hold the model, after evicting its least recently used idle runners
        if the per-node budget asks for it; the node with the most room wins."""
        from models_app.serving.manager import MemoryBudgetError

        nodes = self.nodes()
        able = [n for n in nodes if all(n.resources.get(k, 0) >= v for k, v in needs.items())]
        if not able:
            missing = {k: v for k, v in needs.items() if not any(n.resources.get(k, 0) >= v for n in nodes)}
            raise EngineLoadError(f"no node in the Ray cluster offers what {model} needs: "
                                  f"{_describe(missing or needs)} ({len(nodes)} live node(s))")
        infos = [i for n, i in self.infos().items() if model_of(n) != model]
        best, best_room, best_victims = None, None, None
        for node in able:
            here = [i for i in infos if i["node_id"] == node.id]
            used = sum(i["estimate_mb"] for i in here)
            idle = sorted((i for i in here if i["status"] == "loaded" and not i["in_flight"]),
                          key=lambda i: i["last_used"] or 0)
            victims, count = [], len(here)
            while idle and ((self.memory_budget_mb and used + estimate_mb > self.memory_budget_mb)
                            or (self.max_loaded_models and count + 1 > self.max_loaded_models)):
                victim = idle.pop(0)
                victims.append(victim)
                used -= victim["estimate_mb"]
                count -= 1
            fits = ((not self.memory_budget_mb or used + estimate_mb <= self.memory_budget_mb)
                    and (not self.max_loaded_models or count + 1 <= self.max_loaded_models))
            room = (self.memory_budget_mb or float("inf")) - used
            if fits and (best is None or (len(victims), -room) < (len(best_victims), -best_room)):
                best, best_room, best_victims = node, room, victims
        if best is None:
            loaded = sorted(model_of(n) for n in self.actors() if model_of(n) != model)
            raise MemoryBudgetError(
                f"not enough memory for {model} on any node: needs about {estimate_mb:.0f} MiB of the "
                f"{self.memory_budget_mb:.0f} MiB budget per node, and the runners there are busy",
                needed_mb=estimate_mb, available_mb=0.0, loaded_models=loaded)
        for victim in best_victims:
            victim_name = actor_name(LoadSpec(**victim["spec"]))
            logger.info("unloading %s on node %s to make room for %s", victim_name, best.id[:12], model)
            self.stop(victim_name, "cancelled: model unloaded")
        return best

    def stop(self, name: str, reason: str, drain_s: float = 0.0) -> bool:
        """Ends the runner actor `name` for every web process; False when there is none."""
        ray = self._ray()
        try:
            actor = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return False
        try:
            ray.get(actor.stop.remote(reason, drain_s), timeout=drain_s + self.shutdown_timeout_s)
        except ray.exceptions.RayError:
            pass  # stuck or already dying: the kill below ends it either way
        try:
            ray.kill(actor, no_restart=True)
        except Exception:
            pass
        return True
