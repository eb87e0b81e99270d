"""Settings for the test suite: the production settings with what makes tests slow switched off.

Servers the tests start (tests/servers.py) use this module too, so what a test stores can be read
by the server, and a test that needs one of the things below on switches it on itself (the
environment variable for a server it starts, ``settings`` or the manager's attribute in-process).
"""

import os

from beautyai_site.env import env_bool

# torch's OpenMP threads (one per core unless told) spin while they wait for each other: with another
# process keeping one of two cores busy, four tokens of the bundled model took 2-3 s against 0.4 s on
# one thread; over the transformers tests of test_constraints.py, 5-10 % of their time. Set before
# torch is imported, here and in every runner and server a test starts (they inherit the environment);
# an engine's own n_threads still wins. llama.cpp takes its thread count from its parameters.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def redis_url_plus(url: str, offset: int) -> str:
    """``url`` naming the Redis database ``offset`` after its own: in the path (redis://host/2), or
    in ``?db=`` where redis-py reads it from there (always for unix:// sockets, whose path is the socket)."""
    from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.scheme == "unix" or "db" in query:
        query["db"] = [str(int(query.get("db", ["0"])[0]) + offset)]
        # Not urlunsplit: it writes unix:///run/redis.sock back as unix:/run/redis.sock.
        return f"{url.split('?', 1)[0]}?{urlencode(query, doseq=True)}"
    return urlunsplit(parts._replace(path=f"/{int(parts.path.strip('/') or 0) + offset}"))


# Under pytest-xdist (`make test` runs two workers) each worker gets its own data folder and Redis
# database: pytest-django already gives it its own test database, but the channel layer's groups and
# the cache's keys are named after row ids, which both workers' databases hand out from 1, and the
# live server's log, secret key and model files live in the data folder. Servers and runners a test
# starts inherit the environment, so it is changed once, in the worker (BEAUTYAI_TEST_WORKER marks it).
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _worker.startswith("gw") and os.environ.get("BEAUTYAI_TEST_WORKER") != _worker:
    from pathlib import Path

    os.environ["BEAUTYAI_TEST_WORKER"] = _worker
    _base = Path(os.environ.get("BEAUTYAI_DATA_DIR") or Path(__file__).resolve().parents[1] / "var")
    os.environ["BEAUTYAI_DATA_DIR"] = str(_base / _worker)
    if os.environ.get("REDIS_URL"):
        os.environ["REDIS_URL"] = redis_url_plus(os.environ["REDIS_URL"], int(_worker[2:]))
from beautyai_site.settings import *  # noqa: F401,F403 - the production settings, unchanged but for below

# Django's default PBKDF2 (1,000,000 iterations) costs ~0.4 s per user created or logged in, and the
# suite creates hundreds; what the tests check about passwords does not depend on the iteration count.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# A spare runner is a second process importing an engine's libraries after every load: seconds of
# CPU on a small machine, taken from the test that loaded. tests/engines/test_spare_runners.py and
# tests/system_app/test_restart.py ask for spares.
RUNNER_SPARES = env_bool("BEAUTYAI_RUNNER_SPARES", False)
# The sampler and the log writer write rows that race the flushes between transactional tests; the
# tests of those tasks start them (tests/system_app/conftest.py's background_writer).
BACKGROUND_TASKS_AUTOSTART = env_bool("BEAUTYAI_BACKGROUND_TASKS", False)
