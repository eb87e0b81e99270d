"""Where runners run: the one seam between the manager and the processes that hold models.

The manager asks a `Placement` to start a runner and from then on talks to it only through the
`RunnerConnection` it got back: protocol messages in and out, plus liveness and a hard stop. 
`LocalPlacement` is a spawned process on this host, over a multiprocessing pipe; `RayPlacement`
(ray_placement.py) a named actor per model on a Ray cluster, shared by every web process.
"""

from __future__ import annotations

import multiprocessing
import sys
from abc import ABC, abstractmethod
from dataclasses import asdict
from pathlib import Path

from models_app.serving import protocol as p
from models_app.serving.engines.contract import LoadSpec
from models_app.serving.handle import describe_exit
from models_app.serving.runner import runner_main

_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])


class RunnerConnection(ABC):
    """One started runner. `send` and `recv` may be called from different threads, never each from two."""

    pid: int | None
    node_id: str | None = None
    shared = False  # True: other web processes use the same runner (ray_placement.py)

    @abstractmethod
    def send(self, message: p.ParentMessage) -> None:
        """Raises OSError, EOFError or ValueError when the runner can no longer be reached."""

    @abstractmethod
    def recv(self) -> p.RunnerMessage:
        """The next message; EOFError or OSError once the runner is gone, ProtocolError for one that is not
        a message of this protocol (the connection stays usable)."""

    @abstractmethod
    def alive(self) -> bool: ...

    @property
    @abstractmethod
    def exitcode(self) -> int | None:
        """None while running; negative: killed by that signal."""

    def exit_reason(self) -> str:
        """Why the runner ended, for its status' last_error."""
        return describe_exit(self.exitcode)

    @abstractmethod
    def join(self, timeout: float) -> None:
        """Waits up to `timeout` seconds for the runner to end by itself."""

    @abstractmethod
    def kill(self) -> None:
        """Ends the runner now, whatever it is doing, and waits briefly for it to be gone."""

    @abstractmethod
    def close(self) -> None:
        """Closes this side of the channel; recv in another thread then ends with EOFError or OSError."""


class Placement(ABC):
    shared = False  # runners outlive this web process and serve others too

    @abstractmethod
    def start(self, name: str, spec: LoadSpec | None, *, log_level: str,
              spare_engine: str | None = None) -> RunnerConnection:
        """Starts a runner loading `spec` (without one, a spare for `spare_engine` that waits for a Load)."""


class _LocalConnection(RunnerConnection):
    def __init__(self, process, conn):
        self._process = process
        self._conn = conn
        self.pid = process.pid

    def send(self, message: p.ParentMessage) -> None:
        self._conn.send(p.encode(message))

    def recv(self) -> p.RunnerMessage:
        return p.decode(self._conn.recv())

    def alive(self) -> bool:
        return self._process.is_alive()

    @property
    def exitcode(self) -> int | None:
        return self._process.exitcode

    def join(self, timeout: float) -> None:
        self._process.join(timeout)

    def kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join(5)

    def close(self) -> None:
        self._conn.close()


class LocalPlacement(Placement):
    """A spawned process per runner on this host (spawn, not fork: the parent has threads and maybe CUDA)."""

    def __init__(self):
        self._ctx = multiprocessing.get_context("spawn")

    def start(self, name: str, spec: LoadSpec | None, *, log_level: str,
              spare_engine: str | None = None) -> RunnerConnection:
        # spawn passes sys.path to the child; make sure models_app is importable there even
        # when the parent was started from another directory (daphne, a console script).
        if _PROJECT_ROOT not in sys.path:
            sys.path.append(_PROJECT_ROOT)
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        # Not a daemon: engines such as vLLM start their own worker processes.
        process = self._ctx.Process(target=runner_main,
                                    args=(child_conn, asdict(spec) if spec else None, log_level, spare_engine),
                                    name=name, daemon=False)
        try:
            process.start()
        except Exception:
            parent_conn.close()
            raise
        finally:
            child_conn.close()
        return _LocalConnection(process, parent_conn)
