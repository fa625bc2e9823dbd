"""Executors run candidate measurements; both share run(tasks, done) -> records.

- `local` (default): worker processes on this machine, as many as its cores and free
  memory allow.
- `ray` (extra `tokenomy[ray]`): each candidate a Ray task requesting its CPUs and
  estimated peak memory, on the cluster at `address` (or a local Ray instance)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

from tokenomy.capability import usable_cores
from tokenomy.optimize.measure import Record, Settings, cached, run_candidate, task_key

GiB = 2**30


@dataclass(frozen=True)
class Task:
    model: str | None
    scheme: str
    source_sha: str
    settings: Settings
    peak_bytes: int  # estimated peak RAM of the job
    reference: str | None = None  # quality measured against it (a student's teacher)
    reference_sha: str = ""
    max_kld: float | None = None  # the budget a budgeted scheme (auto) is allocated under
    max_kld_p99: float | None = None  # ... and its worst tokens' line, where given

    @property
    def key(self) -> str:
        from tokenomy.compress import get_scheme

        budgeted = get_scheme(self.scheme).budgeted
        return task_key(self.source_sha, self.scheme, self.settings, self.reference_sha,
                        self.max_kld if budgeted else None,
                        self.max_kld_p99 if budgeted else None)


def split_cached(tasks: list[Task], done: Callable[[Record], None]
                 ) -> tuple[dict[str, Record], list[Task]]:
    """(records already cached, reported to `done`; tasks still to run)."""
    records: dict[str, Record] = {}
    todo = []
    for task in tasks:
        if hit := cached(task.key):
            records[task.scheme] = hit
            done(hit)
        else:
            todo.append(task)
    return records, todo


def _run(task: Task) -> Record:
    return run_candidate(task.model, task.scheme, task.source_sha, task.settings,
                         task.reference, task.reference_sha, task.max_kld, task.max_kld_p99)


class LocalExecutor:
    """Bounded parallelism: at most one job per two cores, and no more jobs at once than
    fit in the free memory by their estimated peaks. Cached tasks run inline."""

    def __init__(self, max_workers: int | None = None):
        self.max_workers = max_workers

    def workers(self, tasks: list[Task]) -> int:
        import psutil

        if self.max_workers:
            return self.max_workers
        by_cpu = max(1, (usable_cores()) // 2)
        biggest = max((t.peak_bytes for t in tasks), default=GiB)
        by_memory = max(1, int(0.8 * psutil.virtual_memory().available // max(biggest, 1)))
        return min(by_cpu, by_memory, max(1, len(tasks)))

    def run(self, tasks: list[Task], done: Callable[[Record], None]) -> list[Record]:
        records, todo = split_cached(tasks, done)
        for record in self._execute(todo):
            records[record.scheme] = record
            done(record)
        return [records[t.scheme] for t in tasks]

    def _execute(self, todo: list[Task]) -> Iterator[Record]:
        if not todo:
            return
        n = self.workers(todo)  # each job in its own process: its own peak RSS
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=n, mp_context=context) as pool:
            futures = [pool.submit(_run, task) for task in todo]
            for future in as_completed(futures):
                yield future.result()


class RayExecutor:
    """Each uncached candidate becomes a Ray task with num_cpus and memory (its estimated
    peak) requested, so the cluster's scheduler places it where it fits. Workers see the
    same TOKENOMY_HOME (put it on shared storage for a multi-node cluster)."""

    def __init__(self, address: str | None = None, num_cpus_per_task: int = 2):
        self.address = address
        self.num_cpus = num_cpus_per_task

    def run(self, tasks: list[Task], done: Callable[[Record], None]) -> list[Record]:
        try:
            import ray
        except ImportError as e:
            from tokenomy.errors import InvalidInputError

            raise InvalidInputError("the ray executor needs Ray: pip install 'tokenomy[ray]'.") \
                from e
        records, todo = split_cached(tasks, done)
        if todo:
            started = not ray.is_initialized()
            if started:
                env = {k: v for k, v in os.environ.items()
                       if k in ("TOKENOMY_HOME", "HF_HUB_OFFLINE")}
                local = {} if self.address else {"_node_ip_address": "127.0.0.1"}
                ray.init(address=self.address, runtime_env={"env_vars": env},
                         include_dashboard=False, log_to_driver=False, **local)
            try:
                remote = ray.remote(_run)
                cpus = min(self.num_cpus, int(ray.cluster_resources().get("CPU", 1)))
                refs = {remote.options(num_cpus=cpus, memory=t.peak_bytes).remote(t): t
                        for t in todo}
                pending = list(refs)
                while pending:
                    ready, pending = ray.wait(pending, num_returns=1)
                    record = ray.get(ready[0])
                    records[record.scheme] = record
                    done(record)
            finally:
                if started:
                    ray.shutdown()
        return [records[t.scheme] for t in tasks]


def make_executor(name: str, address: str | None = None):
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address)
    from tokenomy.errors import InvalidInputError

    raise InvalidInputError(f"unknown executor {name!r}: use 'local' or 'ray'.")
