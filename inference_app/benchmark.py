"""Benchmarks: latency (sequential runs), throughput (concurrent runs), comprehensive (both, plus memory).

Metrics follow vLLM's ``benchmark_serving``, measured in the web process as a client would see them:
  * TTFT: from submitting the request to its first content delta (queue time included);
  * E2E latency: from submitting to the final event;
  * TPOT: (E2E − TTFT) / (output tokens − 1), for requests with more than one output token;
  * ITL: the gaps between successive deltas, pooled over every request of the phase;
  * throughput: completed requests and output tokens divided by the phase's wall time.

A benchmark runs in the request's own thread (Django runs each sync view in its own thread under
ASGI), and the concurrent phase in a thread pool, so the event loop keeps serving other requests.
Each run is a generation opened like a chat's (``services.chat_open`` with the benchmark's
``prompt_plan``, which has no session: nothing but usage is stored). Each run checks the caller's
quota before it starts and records its usage when it ends; a client that leaves cancels the runs in
flight, and the rest never start.
"""

from __future__ import annotations

import math
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from beautyai_site import disconnect
from beautyai_site.api import errors
from inference_app import services
from inference_app.models import BenchmarkRun
from inference_app.usage import quota_check
from models_app import selectors, services as registry

DEFAULT_PROMPT = "Write a short paragraph about the sea."
DEFAULT_MAX_TOKENS = 64


@dataclass
class TimedGeneration:
    """One run as a client saw it: the runner's stats and arrival times. ``reply`` is what
    ``chat_record`` stores the usage of; None for a run that never started."""

    stats: dict | None = None
    error: str | None = None
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    itl_ms: list[float] = field(default_factory=list)
    deltas: int = 0
    queue_time_ms: float | None = None
    reply: services.ReplyBuilder | None = None

    @property
    def output_tokens(self) -> int:
        return int((self.stats or {}).get("tokens_generated") or 0)

    @property
    def prompt_tokens(self) -> int:
        return int((self.stats or {}).get("prompt_tokens") or 0)


def generate_timed(plan: services.ChatPlan, client: disconnect.ClientGone) -> TimedGeneration:
    """Runs one generation of ``plan`` to its end, not storing it yet; a full queue raises
    RateLimitError before anything starts. The generation is cancelled if ``client`` leaves meanwhile.
    """
    result = TimedGeneration()
    started = time.perf_counter()
    last = None

    def observe(event) -> None:
        nonlocal last
        if event.kind != "delta" or not event.text:
            return
        now = time.perf_counter()
        result.deltas += 1
        if last is None:
            result.ttft_ms = (now - started) * 1000.0
        else:
            result.itl_ms.append((now - last) * 1000.0)
        last = now

    run = services.chat_open(plan=plan.another())
    reply = run.read_to_end(client=client, observe=observe)
    result.latency_ms = (time.perf_counter() - started) * 1000.0
    result.reply, result.stats, result.error = reply, reply.stats, reply.error
    result.queue_time_ms = reply.queue_time_ms
    return result


# Statistics -------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks, as numpy.percentile's default."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def distribution(values: list[float]) -> dict:
    if not values:
        return {key: None for key in ("mean", "median", "std", "min", "max", "p50", "p95", "p99")}
    return {
        "mean": round(statistics.fmean(values), 3),
        "median": round(statistics.median(values), 3),
        "std": round(statistics.pstdev(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "p50": round(percentile(values, 50), 3),
        "p95": round(percentile(values, 95), 3),
        "p99": round(percentile(values, 99), 3),
    }


def tpot_ms(run: TimedGeneration) -> float | None:
    if run.error is not None or run.ttft_ms is None or run.output_tokens < 2:
        return None
    return (run.latency_ms - run.ttft_ms) / (run.output_tokens - 1)


def run_result(index: int, run: TimedGeneration) -> dict:
    itl = run.itl_ms
    return {
        "run": index,
        "ttft_ms": None if run.ttft_ms is None else round(run.ttft_ms, 3),
        "tpot_ms": None if tpot_ms(run) is None else round(tpot_ms(run), 3),
        "itl_mean_ms": round(statistics.fmean(itl), 3) if itl else None,
        "e2e_latency_ms": round(run.latency_ms, 3),
        "queue_time_ms": None if run.queue_time_ms is None else round(run.queue_time_ms, 3),
        "prompt_tokens": run.prompt_tokens,
        "output_tokens": run.output_tokens,
        "streamed_deltas": run.deltas,
        "finish_reason": (run.stats or {}).get("finish_reason", "error"),
        "error": run.error,
    }


def phase_summary(runs: list[TimedGeneration], *, duration_s: float, concurrency: int) -> dict:
    done = [run for run in runs if run.error is None]
    total_in = sum(run.prompt_tokens for run in done)
    total_out = sum(run.output_tokens for run in done)
    duration_s = max(duration_s, 1e-9)
    return {
        "completed": len(done),
        "failed": len(runs) - len(done),
        "concurrency": concurrency,
        "duration_s": round(duration_s, 3),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": round(len(done) / duration_s, 3),
        "output_throughput": round(total_out / duration_s, 3),
        "total_token_throughput": round((total_in + total_out) / duration_s, 3),
        "ttft_ms": distribution([run.ttft_ms for run in done if run.ttft_ms is not None]),
        "tpot_ms": distribution([value for value in map(tpot_ms, done) if value is not None]),
        "itl_ms": distribution([gap for run in done for gap in run.itl_ms]),
        "e2el_ms": distribution([run.latency_ms for run in done]),
    }


# Phases -----------------------------------------------------------------------------------------

@dataclass
class Attempts:
    """The runs of one benchmark. Each checks the caller's quota before it starts and records its
    usage as soon as it ends, so a benchmark spends a quota as that many chats would, not past it.
    Both happen in the request's thread; the pool threads of the throughput phase only generate."""

    plan: services.ChatPlan
    client: disconnect.ClientGone

    def refusal(self) -> TimedGeneration | None:
        """None when a run may start; else the failed run that stands for it."""
        if self.client.gone:
            return TimedGeneration(error="cancelled: client disconnected")
        try:
            quota_check(user=self.plan.user, model=self.plan.model)
        except errors.APIError as exc:
            return TimedGeneration(error=exc.message)
        return None

    def generate(self) -> TimedGeneration:
        """A run that could not start (full queue, model gone) is a failed run, not a failed benchmark."""
        started = time.perf_counter()
        try:
            return generate_timed(self.plan, self.client)
        except errors.APIError as exc:
            return TimedGeneration(error=exc.message, latency_ms=(time.perf_counter() - started) * 1000.0)

    def record(self, run: TimedGeneration) -> TimedGeneration:
        if run.reply is not None:
            services.chat_record(run.reply)
        return run


def latency_phase(attempt: Attempts, *, num_runs: int) -> tuple[list[TimedGeneration], float]:
    started = time.perf_counter()
    runs = [attempt.refusal() or attempt.record(attempt.generate()) for _ in range(num_runs)]
    return runs, time.perf_counter() - started


def throughput_phase(attempt: Attempts, *, num_runs: int, concurrency: int) -> tuple[list[TimedGeneration], float]:
    started = time.perf_counter()
    runs: list[TimedGeneration | None] = [None] * num_runs
    running: dict = {}

    def collect(done) -> None:
        for future in done:
            runs[running.pop(future)] = attempt.record(future.result())

    with ThreadPoolExecutor(max_workers=min(concurrency, num_runs), thread_name_prefix="benchmark") as pool:
        for index in range(num_runs):
            while len(running) >= concurrency:
                collect(wait(running, return_when=FIRST_COMPLETED).done)
            refused = attempt.refusal()
            if refused is not None:
                runs[index] = refused
            else:
                running[pool.submit(attempt.generate)] = index
        collect(wait(running).done)
    return runs, time.perf_counter() - started


# Service ----------------------------------------------------------------------------------------

def benchmark_run(*, user, model_name: str, benchmark_type: str, config: dict,
                  api_key_id: int | None = None) -> BenchmarkRun:
    """Runs the benchmark, records each generation's usage and stores the run."""
    model = registry.model_get_for_user(user=user, name=model_name, permission="benchmark")
    registry.require_task(model=model, task="generate", field="model_name")  # before max_tokens is checked against its cap
    cap = model.max_new_tokens
    max_tokens = config.get("max_tokens", min(DEFAULT_MAX_TOKENS, cap))
    if max_tokens > cap:
        raise errors.ValidationError(f"config.max_tokens: at most {cap} for this model",
                                     details={"fields": {"config": {"max_tokens": [f"at most {cap}"]}}})
    settings_used = {
        "num_runs": config.get("num_runs", 5),
        "prompt": config.get("prompt") or DEFAULT_PROMPT,
        "max_tokens": max_tokens,
        "temperature": config.get("temperature", 0.0),
        "concurrency": config.get("concurrency", 4) if benchmark_type != "latency" else 1,
    }
    plan = services.prompt_plan(user=user, model=model, prompt=settings_used["prompt"], transport="benchmark",
                                generation_config={"max_tokens": max_tokens,
                                                   "temperature": settings_used["temperature"]},
                                api_key_id=api_key_id)

    # Captured here: the throughput phase's pool threads do not share this request's context.
    attempt = Attempts(plan=plan, client=disconnect.current())
    started = time.perf_counter()
    memory_before = selectors.model_status(model.name)["memory_usage_mb"]
    results: dict[str, list] = {}
    summary: dict[str, dict] = {}
    if benchmark_type in ("latency", "comprehensive"):
        runs, duration = latency_phase(attempt, num_runs=settings_used["num_runs"])
        results["latency"] = [run_result(i, run) for i, run in enumerate(runs)]
        summary["latency"] = phase_summary(runs, duration_s=duration, concurrency=1)
    if benchmark_type in ("throughput", "comprehensive"):
        runs, duration = throughput_phase(attempt, num_runs=settings_used["num_runs"],
                                          concurrency=settings_used["concurrency"])
        results["throughput"] = [run_result(i, run) for i, run in enumerate(runs)]
        summary["throughput"] = phase_summary(runs, duration_s=duration, concurrency=settings_used["concurrency"])
    if benchmark_type == "comprehensive":
        memory_after = selectors.model_status(model.name)["memory_usage_mb"]
        summary["memory"] = {"before_mb": memory_before, "after_mb": memory_after,
                             "delta_mb": round(memory_after - memory_before, 2)}

    return BenchmarkRun.objects.create(
        user=user, model=model, model_name=model.name, benchmark_type=benchmark_type, config=settings_used,
        results=results, summary=summary, duration_ms=round((time.perf_counter() - started) * 1000.0, 3),
    )


def benchmark_dict(run: BenchmarkRun) -> dict:
    return {
        "benchmark_id": run.pk,
        "model_name": run.model_name,
        "benchmark_type": run.benchmark_type,
        "config": run.config,
        "results": run.results,
        "summary": run.summary,
        "duration_ms": run.duration_ms,
        "created_at": run.created_at,
    }
