"""`make bench`: BeautyAI's overhead against the raw engines, measured in one run.

Entry point: ``python -m bench.run`` (see bench/run.py for the options). The building blocks
live in their own modules so that the smoke test can run each of them for a few tokens:

* ``bench.stats``   — medians and percentiles, no dependencies
* ``bench.server``  — a private daphne server on a free port with a fresh data dir (SQLite)
* ``bench.clients`` — one timed stream per transport: the engine in this process, SSE,
                      WebSocket and /v1 (the official ``openai`` client)
* ``bench.parts``   — the parts (streaming, concurrency, management API, load and memory,
                      constrained decoding, relay ceiling)
* ``bench.token_source`` — part 6's remote engine: an OpenAI-compatible server on 127.0.0.1 that
                      streams one chunk per token as fast as the socket takes them
* ``bench.report``  — the JSON, Markdown summary and PNG chart
* ``bench.ray_channel`` — on its own (``python -m bench.ray_channel``): how tokens should travel from a
                      Ray runner actor (streaming generator vs the runner protocol over a socket)
"""
