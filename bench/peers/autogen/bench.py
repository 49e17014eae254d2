"""AutoGen peer benchmark: the distributed gRPC runtime, three processes.

  host    GrpcWorkerAgentRuntimeHost on 127.0.0.1:PORT   (child process)
  worker  GrpcWorkerAgentRuntime hosting ONE RoutedAgent  (child process)
  driver  GrpcWorkerAgentRuntime that sends the requests  (this process)

The driver keeps C RPC-style send_message calls in flight to the one agent
(each request goes driver -> host -> worker -> host -> driver) until N are
done, and reports like agentmesh's load generator. Each runtime is in its
own process, so no GIL is shared.
"""

import argparse
import asyncio
import ctypes
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import common  # noqa: E402
from common import log, now  # noqa: E402

from autogen_core import (  # noqa: E402
    AgentId,
    MessageContext,
    RoutedAgent,
    message_handler,
    try_get_known_serializers_for_type,
)
from autogen_ext.runtimes.grpc import (  # noqa: E402
    GrpcWorkerAgentRuntime,
    GrpcWorkerAgentRuntimeHost,
)

AGENT_TYPE = "bench_worker"
READY = "READY"


@dataclass
class BenchTask:
    shape: str
    expr: str
    ms: int


@dataclass
class BenchResult:
    value: int
    slept_ms: int


def add_serializers(runtime):
    # The gRPC runtime only (de)serializes types it has been told about, on
    # both sides of the wire.
    runtime.add_message_serializer(try_get_known_serializers_for_type(BenchTask))
    runtime.add_message_serializer(try_get_known_serializers_for_type(BenchResult))


class BenchAgent(RoutedAgent):
    def __init__(self) -> None:
        super().__init__("agentmesh peer benchmark worker")

    @message_handler
    async def on_task(self, message: BenchTask, ctx: MessageContext) -> BenchResult:
        arg = message.expr if message.shape == "trivial" else message.ms
        out = await common.do_work(message.shape, arg)
        return BenchResult(value=out.get("value", 0), slept_ms=out.get("slept_ms", 0))


# ---------------------------------------------------------------- children


def die_with_parent(parent_pid):
    """SIGTERM this process when the parent dies (Linux), so a killed driver
    never leaves a host or worker behind."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl
        sys.exit(1)


async def wait_for_stop(budget_s):
    """Until SIGTERM/SIGINT, or the budget runs out (a child's own watchdog)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), budget_s)
    except asyncio.TimeoutError:
        log("child: time budget spent, exiting")


async def host_main(port, budget_s):
    host = GrpcWorkerAgentRuntimeHost(address=f"127.0.0.1:{port}")
    host.start()
    # start() only schedules the server; wait until the port accepts.
    end = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.02)
    print(READY, flush=True)
    await wait_for_stop(budget_s)
    await host.stop(grace=1)


async def worker_main(port, budget_s):
    runtime = GrpcWorkerAgentRuntime(host_address=f"127.0.0.1:{port}")
    add_serializers(runtime)
    await runtime.start()
    # register() returns once the host has the agent type; requests to an
    # unregistered type are dropped by the host, not failed.
    await BenchAgent.register(runtime, AGENT_TYPE, lambda: BenchAgent())
    print(READY, flush=True)
    await wait_for_stop(budget_s)
    try:
        await asyncio.wait_for(runtime.stop(), 5)
    except (asyncio.TimeoutError, Exception) as e:
        log(f"worker: stop: {e!r}")


# ---------------------------------------------------------------- driver


async def phase(runtime, shape, total, concurrency, deadline):
    target = AgentId(AGENT_TYPE, "default")
    msg = BenchTask(shape=shape, expr=common.TRIVIAL_EXPR, ms=common.SLEEP_MS)
    want = common.expected(shape)

    def check(result):
        got = ({"value": result.value} if shape == "trivial"
               else {"slept_ms": result.slept_ms}) if isinstance(result, BenchResult) else result
        return got == want, result

    return await common.closed_loop(
        lambda: runtime.send_message(msg, target), check, total, concurrency, deadline)


def quiet_late_responses(loop, context):
    """A response that arrives after its send_message was cancelled (at the
    deadline) makes AutoGen's _process_response raise InvalidStateError in a
    background task; that is expected then, so it is not logged."""
    if isinstance(context.get("exception"), asyncio.InvalidStateError):
        return
    loop.default_exception_handler(context)


async def driver_main(port, args, deadline):
    asyncio.get_running_loop().set_exception_handler(quiet_late_responses)
    runtime = GrpcWorkerAgentRuntime(host_address=f"127.0.0.1:{port}")
    add_serializers(runtime)
    await runtime.start()
    try:
        if args.warmup:
            log(f"warm-up: {args.warmup} tasks")
            wl, we = await phase(runtime, args.shape, args.warmup, args.concurrency, deadline)
            log(f"warm-up done: {len(wl)} ok, {we.count} errors {we.samples}")
        log(f"measured: {args.tasks} tasks, concurrency {args.concurrency}")
        t0 = now()
        latencies, errs = await phase(runtime, args.shape, args.tasks, args.concurrency, deadline)
        elapsed = now() - t0
        if now() >= deadline:
            log("deadline reached; unfinished tasks count as errors")
        return latencies, errs, elapsed
    finally:
        try:
            await asyncio.wait_for(runtime.stop(), 5)
        except (asyncio.TimeoutError, Exception) as e:
            log(f"driver: stop: {e!r}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(role, port, budget_s):
    cmd = [sys.executable, os.path.abspath(__file__), "--role", role, "--port", str(port),
           "--budget-s", str(budget_s), "--parent-pid", str(os.getpid())]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def wait_ready(proc, name, deadline):
    fd = proc.stdout.fileno()
    while True:
        left = deadline - now()
        if left <= 0:
            raise RuntimeError(f"{name} not ready in time")
        r, _, _ = select.select([fd], [], [], min(left, 0.5))
        if r:
            line = proc.stdout.readline()
            if line.strip() == READY:
                return
            if line == "":
                raise RuntimeError(f"{name} exited (code {proc.wait()}) before it was ready")
        elif proc.poll() is not None:
            raise RuntimeError(f"{name} exited (code {proc.returncode}) before it was ready")


def stop_children(procs):
    for p in reversed(procs):  # worker first, then host
        if p.poll() is None:
            p.terminate()
    for p in reversed(procs):
        try:
            p.wait(timeout=8)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--role", choices=["driver", "host", "worker"], default="driver")
    pre.add_argument("--port", type=int)
    pre.add_argument("--budget-s", type=float)
    pre.add_argument("--parent-pid", type=int)
    role, rest = pre.parse_known_args(argv)
    if role.role != "driver":
        die_with_parent(role.parent_pid)
        fn = host_main if role.role == "host" else worker_main
        asyncio.run(fn(role.port, role.budget_s))
        return 0

    args = common.parse_args(rest)
    deadline = now() + args.timeout_s
    signal.signal(signal.SIGTERM, _raise_interrupt)
    port = free_port()
    budget = args.timeout_s + 10  # the children's own watchdog
    procs = []
    try:
        log(f"autogen: host on 127.0.0.1:{port}")
        procs.append(spawn("host", port, budget))
        wait_ready(procs[-1], "host", deadline)
        procs.append(spawn("worker", port, budget))
        wait_ready(procs[-1], "worker", deadline)
        log(f"autogen: host pid {procs[0].pid}, worker pid {procs[1].pid}, driver pid {os.getpid()}")
        latencies, errs, elapsed = asyncio.run(driver_main(port, args, deadline))
        import importlib.metadata as md

        notes = (f"3 processes: host (GrpcWorkerAgentRuntimeHost), worker (GrpcWorkerAgentRuntime, "
                 f"1 RoutedAgent), driver (GrpcWorkerAgentRuntime, send_message RPC, {args.concurrency} in flight); "
                 f"127.0.0.1 gRPC, autogen-core {md.version('autogen-core')}, "
                 f"autogen-ext {md.version('autogen-ext')}, cpus={os.cpu_count()}")
        common.report("autogen", args, latencies, errs.count, elapsed, notes, errs.samples)
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        stop_children(procs)


if __name__ == "__main__":
    sys.exit(main())
