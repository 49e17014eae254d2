"""Shared by the peer benchmarks: the workloads, the CLI and the report.

The report is the same JSON object agentmesh's load generator prints
(crates/agentmesh/src/bench/report.rs), as the last line of stdout.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import math
import operator
import sys
import time

SLEEP_MS = 10
TRIVIAL_EXPR = "1+1"

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_UNOPS = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def safe_eval(expr: str):
    """Arithmetic only: numbers, + - * / // % and parentheses. No names,
    calls or attributes, so untrusted input cannot run code."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNOPS:
            return _UNOPS[type(node.op)](ev(node.operand))
        raise ValueError(f"unsupported expression: {ast.dump(node)}")

    if len(expr) > 256:
        raise ValueError("expression too long")
    return ev(ast.parse(expr, mode="eval"))


async def do_work(shape: str, arg):
    """The task body, as an agent/actor runs it. Returns the result dict that
    agentmesh's shapes expect."""
    if shape == "trivial":
        return {"value": safe_eval(arg)}
    if shape == "sleep":
        await asyncio.sleep(arg / 1000.0)
        return {"slept_ms": arg}
    raise ValueError(f"unknown shape {shape!r}")


def task_arg(shape: str):
    return TRIVIAL_EXPR if shape == "trivial" else SLEEP_MS


def expected(shape: str):
    return {"value": 2} if shape == "trivial" else {"slept_ms": SLEEP_MS}


def parse_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=["trivial", "sleep"], required=True)
    p.add_argument("--tasks", type=int, required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--timeout-s", type=float, default=300.0)
    p.add_argument("--warmup", type=int, default=None,
                   help="uncounted warm-up tasks (default min(1000, N/10))")
    a = p.parse_args(argv)
    if a.tasks < 1 or a.concurrency < 1 or a.timeout_s <= 0:
        p.error("--tasks, --concurrency and --timeout-s must be positive")
    if a.warmup is None:
        a.warmup = min(1000, a.tasks // 10)
    return a


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def percentiles(latencies_s):
    """Nearest rank, in ms rounded to microseconds, as report.rs does."""
    if not latencies_s:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    s = sorted(latencies_s)
    n = len(s)

    def at(q):
        rank = min(max(math.ceil(q * n), 1), n)
        return round(s[rank - 1] * 1e3, 3)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(s[-1] * 1e3, 3)}


def report(system, args, latencies_s, errors, elapsed_s, notes, error_samples=()):
    completed = len(latencies_s)
    # Tasks never finished (deadline) count as errors, as agentmesh counts them.
    errors = errors + max(0, args.tasks - completed - errors)
    out = {
        "system": system,
        "shape": args.shape,
        "tasks": args.tasks,
        "concurrency": args.concurrency,
        "completed": completed,
        "errors": errors,
        "elapsed_s": round(elapsed_s, 3),
        "throughput_per_s": round(completed / max(elapsed_s, 1e-9), 3),
        "latency_ms": percentiles(latencies_s),
        "notes": notes,
    }
    if error_samples:
        out["error_samples"] = list(error_samples)[:5]
    sys.stdout.flush()
    print(json.dumps(out), flush=True)
    return out


class ErrorLog:
    """Counts errors and keeps the first few distinct messages."""

    def __init__(self):
        self.count = 0
        self.samples = []

    def add(self, msg):
        self.count += 1
        msg = str(msg)[:300]
        if len(self.samples) < 5 and msg not in self.samples:
            self.samples.append(msg)


def now():
    return time.perf_counter()


async def closed_loop(call, check, total, concurrency, deadline):
    """C coroutines, each starting a call as soon as its last one returned,
    until `total` calls were made or `deadline` passed: the load pattern of
    agentmesh's own load generator. `call()` returns an awaitable of one
    task's result; `check(result)` returns the value compared with the
    expected one. Returns the latencies (seconds) of correct results and
    an ErrorLog; calls cut off by the deadline count as unfinished."""
    latencies = []
    errs = ErrorLog()
    claimed = 0

    async def one_loop():
        nonlocal claimed
        while claimed < total and now() < deadline:
            claimed += 1
            started = now()
            try:
                result = await asyncio.wait_for(call(), max(deadline - now(), 0.001))
            except asyncio.TimeoutError:
                return
            except Exception as e:
                errs.add(f"{type(e).__name__}: {e}")
                continue
            done = now()
            ok, shown = check(result)
            if ok:
                latencies.append(done - started)
            else:
                errs.add(f"wrong result {shown!r}")

    await asyncio.gather(*(one_loop() for _ in range(min(concurrency, total))))
    return latencies, errs
