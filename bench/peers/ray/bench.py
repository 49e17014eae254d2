"""Ray peer benchmark: ONE driver keeps C calls in flight to ONE async actor
until N are done, and reports like agentmesh's load generator.

A fresh local cluster (ray.init with its own temp dir) is started and shut
down every run; it never connects to an existing one.
"""

from __future__ import annotations

import os

os.environ["RAY_AUTH_MODE"] = "disabled"  # before importing ray
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import asyncio
import shutil
import signal
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import common  # noqa: E402
from common import ErrorLog, log, now  # noqa: E402

import ray  # noqa: E402


@ray.remote
class Worker:
    async def ping(self):
        return "pong"

    async def run(self, shape, arg):
        # Imported in the worker process; common.py travels via sys.path
        # set in the runtime env below.
        import common as c

        return await c.do_work(shape, arg)


def phase_wait(actor, shape, total, concurrency, deadline):
    """Driver loop with ray.wait: C ObjectRefs in flight; latency is from
    .remote() to the value fetched by the driver."""
    arg = common.task_arg(shape)
    want = common.expected(shape)
    pending = {}
    submitted = 0
    latencies = []
    errs = ErrorLog()
    while submitted < total or pending:
        while len(pending) < concurrency and submitted < total:
            pending[actor.run.remote(shape, arg)] = now()
            submitted += 1
        left = deadline - now()
        if left <= 0:
            break
        refs = list(pending)
        ready, rest = ray.wait(refs, num_returns=1, timeout=left)
        if not ready:
            break
        if rest:  # everything else that is already done, without blocking
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        try:
            values = ray.get(ready)  # one call for the whole ready batch
        except Exception:
            values = None  # some task failed: fetch one by one below
        done = now()
        for i, ref in enumerate(ready):
            started = pending.pop(ref)
            if values is not None:
                value = values[i]
            else:
                try:
                    value = ray.get(ref)
                except Exception as e:  # a task error, counted not fatal
                    errs.add(f"{type(e).__name__}: {e}")
                    continue
                done = now()
            if value == want:
                latencies.append(done - started)
            else:
                errs.add(f"wrong result {value!r}")
    for ref in pending:
        ray.cancel(ref)
    return latencies, errs


def phase_asyncio(actor, shape, total, concurrency, deadline):
    """Driver loop with asyncio: C coroutines each awaiting one ref at a
    time, like agentmesh's C loops."""
    arg = common.task_arg(shape)
    want = common.expected(shape)
    return asyncio.run(common.closed_loop(
        lambda: actor.run.remote(shape, arg), lambda value: (value == want, value),
        total, concurrency, deadline))


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    import argparse

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--driver", choices=["wait", "asyncio"], default="wait")
    extra, rest = pre.parse_known_args(argv)
    args = common.parse_args(rest)
    phase = phase_wait if extra.driver == "wait" else phase_asyncio
    deadline = now() + args.timeout_s
    signal.signal(signal.SIGTERM, _raise_interrupt)

    temp_dir = tempfile.mkdtemp(prefix="rayb-", dir="/tmp")  # short: socket paths
    cpus = os.cpu_count() or 1
    peers_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    started_ray = False
    try:
        log(f"ray {ray.__version__}: starting a local cluster in {temp_dir}")
        ray.init(
            num_cpus=cpus,
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=temp_dir,
            runtime_env={"env_vars": {"PYTHONPATH": os.path.abspath(peers_dir)}},
        )
        started_ray = True
        actor = Worker.options(max_concurrency=max(args.concurrency, 1)).remote()
        assert ray.get(actor.ping.remote(), timeout=max(deadline - now(), 1)) == "pong"

        if args.warmup:
            log(f"warm-up: {args.warmup} tasks")
            wl, we = phase(actor, args.shape, args.warmup, args.concurrency, deadline)
            log(f"warm-up done: {len(wl)} ok, {we.count} errors")
        log(f"measured: {args.tasks} tasks, concurrency {args.concurrency}, driver {extra.driver}")
        t0 = now()
        latencies, errs = phase(actor, args.shape, args.tasks, args.concurrency, deadline)
        elapsed = now() - t0
        if now() >= deadline:
            log("deadline reached; unfinished tasks count as errors")
        notes = (f"1 async actor (max_concurrency={args.concurrency}), 1 driver "
                 f"({'ray.wait' if extra.driver == 'wait' else 'asyncio await refs'}), "
                 f"num_cpus={cpus}, ray {ray.__version__}, local cluster")
        common.report("ray", args, latencies, errs.count, elapsed, notes, errs.samples)
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if started_ray:
            try:
                ray.shutdown()
            except BaseException as e:  # keep cleaning up
                log(f"ray.shutdown: {e!r}")
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
