"""A private BeautyAI server for the benchmark: fresh data dir, SQLite (or a fresh PostgreSQL database for
part 3's second column), its own port.

Started as ``python -m beautyai_site.serve`` (daphne) directly (no shell), so ``Popen.pid`` is the
web process whose RSS part 4 watches. Stopping sends SIGTERM to that pid (daphne exits and its
EngineManager stops the runners), then kills by pid whatever of its own children is still alive.
Nothing is ever killed by name or pattern.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LLAMA = "smollm2-135m-instruct"
HF = "smollm2-135m-instruct-hf"
HF_BATCHED = "bench-smollm2-hf-batched"

# Chosen for the benchmark; everything else keeps the project's defaults (logging included),
# because the overhead of the real configuration is what is measured.
BENCH_ENV = {
    "BEAUTYAI_THROTTLE_CHAT": "100000/minute",
    "BEAUTYAI_KEEP_ALIVE_SECONDS": "-1",  # no idle unload in the middle of a part
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
    "DJANGO_SETTINGS_MODULE": "beautyai_site.settings",
}
# The benchmark runs on its own SQLite file (or its own PostgreSQL database, PostgresDatabase) and the
# in-memory channel layer.
DROPPED_ENV = ("DATABASE_URL", "REDIS_URL", "BEAUTYAI_MODEL_ROOTS", "DJANGO_DEBUG", "BEAUTYAI_DATA_DIR")


class RayHead:
    """A one-node Ray cluster on 127.0.0.1 for BENCH_PLACEMENT=ray: Ray's own ``ray.cluster_utils.Cluster``
    inside the benchmark's process, so every Ray process it starts (GCS, raylet, workers, the runner
    actors) is a child of this process and ends with ``stop()``. Never ``ray stop``: that ends every
    Ray cluster on the host, other people's included. Starting a head also rewrites the host's "current
    cluster" file (what ``ray.init("auto")`` reads) and stopping it deletes that file; both times the
    previous content is put back, so a cluster someone else runs here stays the one "auto" finds."""

    # Ray reads this when it starts a node and when a driver connects: every process binds 127.0.0.1.
    ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

    def __init__(self, num_cpus: int = 2, object_store_bytes: int = 80_000_000):
        self.num_cpus, self.object_store_bytes = num_cpus, object_store_bytes
        self.cluster = None
        self.address: str | None = None
        self._saved_env: dict[str, str | None] = {}
        self._address_file: Path | None = None
        self._previous_address: str | None = None

    def start(self) -> "RayHead":
        # Before Ray is imported: it reads the variable into a constant at import.
        self._saved_env = {k: os.environ.get(k) for k in self.ENV}
        os.environ.update(self.ENV)
        try:
            from ray._common.utils import get_ray_address_file
            from ray.cluster_utils import Cluster
        except ImportError as exc:
            raise ServerError(f"BENCH_PLACEMENT=ray needs Ray in this environment ({exc})") from None
        self._address_file = Path(get_ray_address_file(None))
        try:
            self._previous_address = self._address_file.read_text()
        except OSError:
            self._previous_address = None
        try:
            self.cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": self.num_cpus, "object_store_memory": self.object_store_bytes,
                "include_dashboard": False, "node_ip_address": "127.0.0.1"})
        finally:
            self._restore_address_file()
        self.address = self.cluster.address
        return self

    def _restore_address_file(self) -> None:
        if self._address_file is None:
            return
        try:
            if self._previous_address is None:
                self._address_file.unlink(missing_ok=True)
            else:
                self._address_file.write_text(self._previous_address)
        except OSError:
            pass

    def server_env(self) -> dict:
        """What a BenchServer needs to place its runners on this cluster."""
        return {"BEAUTYAI_PLACEMENT": "ray", "RAY_ADDRESS": self.address, **self.ENV}

    def describe(self) -> dict:
        import ray

        return {"address": self.address, "ray": ray.__version__, "num_cpus": self.num_cpus,
                "object_store_bytes": self.object_store_bytes, "nodes": 1}

    def stop(self) -> None:
        try:
            if self.cluster is not None:
                self.cluster.shutdown()
                self.cluster = None
        finally:
            self._restore_address_file()
            for key, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            self._saved_env = {}


class PostgresDatabase:
    """A database of its own on a PostgreSQL server, for part 3 on PostgreSQL (BENCH_POSTGRES_URL): created
    with a name no one else uses, dropped at ``drop()`` (closing the server's sessions first). The server
    URL names an existing database to connect to for that (``postgres``); nothing in it is touched."""

    def __init__(self, server_url: str):
        from urllib.parse import urlparse

        parsed = urlparse(server_url)
        if parsed.scheme not in ("postgres", "postgresql"):
            raise ServerError("BENCH_POSTGRES_URL must be a postgres:// URL")
        self.server_url = server_url
        # Lower-case letters and digits only: the name goes into CREATE/DROP DATABASE unquoted-safe.
        self.name = f"beautyai_bench_{os.getpid()}_{int(time.time())}"
        self.url = parsed._replace(path=f"/{self.name}").geturl()
        self.created = False

    def _execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.server_url, autocommit=True, connect_timeout=5) as connection:
            connection.execute(sql)

    def reachable(self) -> bool:
        try:
            self._execute("SELECT 1")
            return True
        except Exception:
            return False

    def create(self) -> "PostgresDatabase":
        self._execute(f'CREATE DATABASE "{self.name}"')
        self.created = True
        return self

    def drop(self) -> None:
        if self.created:
            self._execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self.created = False

    def server_env(self) -> dict:
        """What a BenchServer needs to keep its rows here instead of in its SQLite file."""
        return {"DATABASE_URL": self.url}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerError(RuntimeError):
    pass


class BenchServer:
    def __init__(self, *, keep_data: bool = False, extra_env: dict | None = None,
                 serve: tuple[str, ...] = ("-m", "beautyai_site.serve")):
        self.serve = serve  # what the interpreter runs: bench.ttft_timeline adds its timers first
        self.data_dir = Path(tempfile.mkdtemp(prefix="beautyai-bench-"))
        self.keep_data = keep_data
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key: str | None = None
        self.process: subprocess.Popen | None = None
        self.log_path = self.data_dir / "daphne.log"
        self._log = None
        self.env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
        self.env.update(BENCH_ENV)
        self.env["BEAUTYAI_DATA_DIR"] = str(self.data_dir)
        self.env.update(extra_env or {})
        self.child_pids: set[int] = set()
        self._client: httpx.Client | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def _manage(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=PROJECT_ROOT, env=self.env,
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise ServerError(f"manage.py {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        return result.stdout

    def start(self, timeout: float = 120) -> "BenchServer":
        self._manage("migrate", "--noinput")
        out = self._manage("bootstrap")
        for line in out.splitlines():
            if line.startswith("  admin API key:"):
                self.api_key = line.split()[-1]
        if not self.api_key:
            raise ServerError(f"bootstrap printed no admin API key:\n{out}")
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, *self.serve, "-b", "127.0.0.1", "-p", str(self.port),
             "beautyai_site.asgi:application"],
            cwd=PROJECT_ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"daphne did not start; log tail:\n{self.log_tail()}")
            time.sleep(0.2)
        self._client = httpx.Client(base_url=self.url, headers=self.auth_headers(), timeout=600)
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def remember_children(self) -> None:
        """Runner pids are remembered while the server lives, so stop() can check each one is gone."""
        import psutil

        try:
            for child in psutil.Process(self.pid).children(recursive=True):
                self.child_pids.add(child.pid)
        except psutil.Error:
            pass

    def stop(self) -> dict:
        """SIGTERM to daphne, then SIGKILL by pid to it and to any of its children still alive."""
        import psutil

        report = {"unloaded": [], "daphne_exit": None, "sigterm_exit_s": None, "killed_pids": []}
        if self.process is not None and self.process.poll() is None:
            self.remember_children()
            # Unload first: with a runner alive, daphne's exit waits on it (see the report).
            report["unloaded"] = self.unload_all()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process is not None and self.process.poll() is None:
            self.remember_children()
            started = time.monotonic()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
                report["sigterm_exit_s"] = round(time.monotonic() - started, 2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
                report["killed_pids"].append(self.process.pid)
        if self.process is not None:
            report["daphne_exit"] = self.process.returncode
        deadline = time.monotonic() + 15
        for pid in sorted(self.child_pids):
            try:
                proc = psutil.Process(pid)
                # Only our own runners: a recycled pid would have another command line.
                if "multiprocessing" not in " ".join(proc.cmdline()):
                    continue
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except psutil.NoSuchProcess:
                continue
            except psutil.TimeoutExpired:
                try:
                    proc.kill()
                    report["killed_pids"].append(pid)
                except psutil.Error:
                    pass
            except psutil.Error:
                continue
        if self._log is not None:
            self._log.close()
            self._log = None
        if not self.keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        return report

    def unload_all(self) -> list[str]:
        """Unloads every model the server reports loaded or loading; best effort."""
        done = []
        try:
            models = self._client.get("/models/", params={"limit": 100}, timeout=30).json().get("models") or []
        except Exception:
            return done
        for model in models:
            if model.get("status") in ("loaded", "loading"):
                try:
                    self._client.post(f"/models/{model['model_name']}/unload", json={}, timeout=60)
                    done.append(model["model_name"])
                except Exception:
                    pass
        return done

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- API helpers -------------------------------------------------------------------------

    def auth_headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"}

    def call(self, method: str, path: str, *, json=None, expect: int | tuple = 200, timeout: float = 900):
        response = self._client.request(method, path, json=json, timeout=timeout)
        expected = (expect,) if isinstance(expect, int) else expect
        if response.status_code not in expected:
            raise ServerError(f"{method} {path} answered {response.status_code}: {response.text[:1000]}")
        return response.json()

    def load(self, name: str) -> tuple[float, dict]:
        """POST /models/{name}/load; (seconds seen by the client, response body)."""
        started = time.perf_counter()
        body = self.call("POST", f"/models/{name}/load", json={})
        elapsed = time.perf_counter() - started
        self.remember_children()
        return elapsed, body

    def unload(self, name: str) -> dict:
        return self.call("POST", f"/models/{name}/unload", json={})

    def status(self, name: str) -> dict:
        return self.call("GET", f"/models/{name}/status")["data"]

    def model_config(self, name: str) -> dict:
        return self.call("GET", f"/models/{name}")["data"]

    def set_parameters(self, name: str, **params) -> dict:
        """Merges ``params`` into the entry's engine parameters (PUT sends the whole dict)."""
        detail = self.model_config(name)
        config = detail.get("model_config") or detail
        merged = {**(config.get("parameters") or {}), **params}
        return self.call("PUT", f"/models/{name}", json={"updates": {"parameters": merged}})

    def add_model(self, name: str, config: dict) -> dict:
        return self.call("POST", "/models/", json={"model_name": name, "model_config": config}, expect=201)

    def add_batched_transformers(self, name: str = HF_BATCHED, max_batch_size: int = 16) -> Path:
        """Registers the bundled model as a safetensors folder inside the data dir, with batching on."""
        from models_app.serving.engines.bundled import ensure_safetensors_folder

        folder = ensure_safetensors_folder(self.data_dir / "models" / "smollm2-135m-instruct-safetensors")
        self.add_model(name, {"model_id": str(folder), "engine": "transformers", "dtype": "float32",
                              "max_new_tokens": 512,
                              "parameters": {"max_batch_size": max_batch_size, "max_queue": 64}})
        return folder
