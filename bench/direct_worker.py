"""The raw engine, alone in its own process: the baseline side of every comparison.

Why not in the benchmark's own process: which native libraries a process has loaded changes how fast
an engine runs. On the 2-core machine this harness was written on, transformers decoded ~4x faster in
a process that had loaded llama.cpp first than in a process holding transformers alone (as a runner
does) — so an engine measured next to the other engine would be a baseline no runner can match. Here
each engine gets a fresh interpreter that imports only what that engine imports, and every timing is
taken inside this process (no pipe between the clock and the engine).

Protocol: one JSON object per line on stdin, one JSON answer per line on the original stdout (the
engine libraries' own prints go to stderr).
  {"op": "load", "spec": {...LoadSpec}}        -> {"load_s": float}
  {"op": "generate", "max_tokens": N, "prompt": P, "constraint": C or null}
                                                -> {"result": {...StreamResult fields}}
  {"op": "close"}                               -> {"ok": true}
  {"op": "exit"}                                -> (process exits)
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import asdict


def main() -> int:
    # Keep the protocol channel clean: whatever a library prints goes to stderr.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    from bench import clients
    from models_app.serving.engines.contract import LoadSpec

    engine = None
    for line in sys.stdin:
        try:
            cmd = json.loads(line)
            op = cmd.get("op")
            if op == "load":
                if engine is not None:
                    engine.close()
                engine, seconds = clients.load_direct_engine(LoadSpec(**cmd["spec"]))
                answer = {"load_s": seconds}
            elif op == "generate":
                result = clients.direct_stream(engine, int(cmd["max_tokens"]), cmd.get("prompt") or clients.PROMPT,
                                               cmd.get("constraint"))
                answer = {"result": asdict(result)}
            elif op == "close":
                if engine is not None:
                    engine.close()
                    engine = None
                answer = {"ok": True}
            elif op == "exit":
                break
            else:
                answer = {"error": f"unknown op {op!r}"}
        except Exception as exc:
            answer = {"error": f"{exc.__class__.__name__}: {exc}", "traceback": traceback.format_exc()}
        protocol.write(json.dumps(answer) + "\n")
    if engine is not None:
        engine.close()
    protocol.close()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
