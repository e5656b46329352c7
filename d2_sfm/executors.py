"""Where the work of a pipeline step runs: in this process ("local") or on a Ray cluster ("ray").

Ray is an optional extra (`pip install -e ".[ray]"`) and is imported only when a Ray executor is
used: importing d2_sfm never imports ray. The driver keeps a bounded number of tasks in flight and
hands results back as they arrive, so the caller writes them one by one (bounded driver memory).
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar

from .errors import ConfigError, D2SfmError, check_options

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
IN_FLIGHT_PER_SLOT = 2  # tasks submitted per task slot of the cluster: busy workers, bounded memory
TASK_RETRIES = 3  # a worker process killed mid-task is rerun by Ray this many times

Item = TypeVar("Item")
Result = TypeVar("Result")


class ExecutorError(D2SfmError):
    """The chosen executor cannot run (Ray missing, cluster unreachable or lost mid-run)."""


@dataclass(frozen=True)
class ExecutorConfig:
    kind: str = "local"  # one of EXECUTORS
    ray_address: str | None = None  # None: $RAY_ADDRESS, else a local Ray instance started here
    ray_gpus_per_task: float = 0.0  # GPUs each Ray task asks for (0: CPU tasks)
    max_in_flight: int | None = None  # tasks submitted but not yet written; None: 2 per task slot

    def __post_init__(self) -> None:
        local = self.kind == "local"
        check_options("executor", kind=self.kind not in EXECUTORS,
                      ray_address=local and self.ray_address is not None,  # given, but nothing would use it
                      ray_gpus_per_task=not 0.0 <= self.ray_gpus_per_task < float("inf")
                      or (local and self.ray_gpus_per_task > 0),
                      max_in_flight=self.max_in_flight is not None and self.max_in_flight < 1)

    @property
    def is_ray(self) -> bool:
        return self.kind == "ray"


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """--executor, --ray-address and --ray-gpus-per-task (defaults from ExecutorConfig)."""
    group = parser.add_argument_group("Executor (where the work runs)")
    group.add_argument("--executor", choices=EXECUTORS, default="local",
                       help="local: this process; ray: tasks on a Ray cluster (pip install -e '.[ray]')")
    group.add_argument("--ray-address", default=None,
                       help="Ray cluster address, e.g. 10.0.0.1:6379 (default: $RAY_ADDRESS, else a local "
                            "Ray instance started for this run)")
    group.add_argument("--ray-gpus-per-task", type=float, default=0.0,
                       help="GPUs per Ray task (e.g. 1, or 0.5 for two tasks per GPU); 0: CPU tasks")


def executor_config_from_args(args: argparse.Namespace) -> ExecutorConfig:
    return ExecutorConfig(kind=args.executor, ray_address=args.ray_address,
                          ray_gpus_per_task=args.ray_gpus_per_task)


def import_ray() -> Any:
    """The ray module, or one clear error line when the extra is not installed."""
    try:
        import ray  # noqa: PLC0415  (optional extra: imported only when asked for)
    except ImportError:
        raise ExecutorError("--executor ray needs Ray, which is not installed here: pip install -e '.[ray]' "
                            "(ray 2.60), or use --executor local") from None
    return ray


_connected: list[str] = []  # the address this process's Ray session was opened with


def ray_session(config: ExecutorConfig) -> Any:
    """Connect to the configured cluster (once per process and address); return the ray module.
    No address and no $RAY_ADDRESS: a new local instance ("local"), never someone else's cluster."""
    ray = import_ray()
    address = config.ray_address or os.environ.get("RAY_ADDRESS") or "local"
    if ray.is_initialized():
        if _connected and _connected[0] == address:
            return ray
        ray.shutdown()
    _connected.clear()
    options = {"include_dashboard": False} if address == "local" else {}
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ExecutorError(f"cannot connect to the Ray cluster at {address}: {first_line(error)}") from None
    _connected.append(address)
    logger.info("Ray cluster at %s: %s", address, ray.cluster_resources())
    return ray


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def in_flight_bound(ray: Any, config: ExecutorConfig, num_cpus: float) -> int:
    """Tasks kept submitted: the configured bound, else two per task slot of the cluster."""
    if config.max_in_flight is not None:
        return config.max_in_flight
    resources = ray.cluster_resources()
    slots = resources.get("CPU", 1.0) / max(num_cpus, 1e-6)
    if config.ray_gpus_per_task > 0:
        slots = min(slots, resources.get("GPU", 0.0) / config.ray_gpus_per_task)
    return max(2, int(IN_FLIGHT_PER_SLOT * max(slots, 1.0)))


def remote_function(config: ExecutorConfig, function: Callable[..., Any], *, num_cpus: float = 1.0,
                    max_retries: int = TASK_RETRIES) -> Any:
    """`function` as a Ray remote function with this executor's resources and retries."""
    ray = ray_session(config)
    return ray.remote(num_cpus=num_cpus, num_gpus=config.ray_gpus_per_task, max_retries=max_retries,
                      retry_exceptions=False)(function)


def map_unordered(config: ExecutorConfig, function: Callable[..., Result], items: Iterable[Item],
                  *, args: tuple = (), num_cpus: float = 1.0, max_retries: int = TASK_RETRIES) -> Iterator[Result]:
    """`function(*args, item)` for every item, yielding results as they finish (local: in order).

    Items are consumed lazily. Ray: each item is one task. `function` must be a Python function
    (module-level, or a closure; not a builtin), importable from d2_sfm or serialisable by value on the
    workers. Function, args and item are serialised by Ray, the args once; large ones travel through
    the object store, as do results. At most `in_flight_bound`
    tasks are pending, so the driver never holds more items or results than that. A worker killed
    mid-task is rerun `max_retries` times; a D2SfmError raised by a task is re-raised as is; a lost
    cluster is one ExecutorError line (results yielded before it stay valid).
    """
    if not config.is_ray:
        for item in items:
            yield function(*args, item)
        return
    ray = ray_session(config)
    remote = remote_function(config, function, num_cpus=num_cpus, max_retries=max_retries)
    shared = tuple(ray.put(arg) for arg in args)  # sent once, not with every task
    submissions = (remote.remote(*shared, item) for item in items)
    yield from drain(ray, submissions, in_flight_bound(ray, config, num_cpus))


def drain(ray: Any, submissions: Iterator[Any], max_in_flight: int) -> Iterator[Any]:
    """Results of the object refs made lazily by `submissions`, at most `max_in_flight` pending.
    While waiting, the cluster is watched: a lost head or no node left is an ExecutorError."""
    pending: list[Any] = []
    exhausted = False
    watch = ClusterWatch(ray)
    while True:
        while not exhausted and len(pending) < max_in_flight:
            ref = next(submissions, None)
            if ref is None:
                exhausted = True
            else:
                pending.append(ref)
        if not pending:
            return
        ready, pending = ray.wait(pending, num_returns=1, timeout=WATCH_INTERVAL_S)
        if not ready:
            watch.check()
            continue
        try:
            result = ray.get(ready[0])
        except ray.exceptions.RayTaskError as error:  # the task raised: a bad input, or a bug
            if isinstance(error.cause, (D2SfmError, OSError)):
                raise error.cause from None  # one line, as in a local run
            raise  # a bug: the worker's traceback is in the error
        except ray.exceptions.RayError as error:  # workers or nodes lost beyond the retries
            raise ExecutorError(f"the Ray run stopped: {type(error).__name__}: {first_line(error)}; items "
                                "written so far are kept, run again to resume") from None
        watch.healthy()
        yield result


def lost_after_seconds() -> float:
    text = os.environ.get(LOST_AFTER_ENV)
    if text is None:
        return LOST_AFTER_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 1.0 <= seconds < float("inf"):
        raise ConfigError(f"{LOST_AFTER_ENV}={text!r}: expected a number of seconds, at least 1")
    return seconds


def disconnect(ray: Any) -> None:
    """Leave a lost cluster now, so that Ray's exit handler does not wait for it."""
    _connected.clear()
    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001  (nothing left to disconnect from)
        logger.debug("ray.shutdown after losing the cluster", exc_info=True)


WATCH_INTERVAL_S = 2.0  # how often a driver waiting for results checks the cluster
LOST_AFTER_S = 15.0  # unreachable head, or no node with CPUs, for this long: the cluster is gone
LOST_AFTER_ENV = "D2_SFM_RAY_LOST_AFTER_S"  # overrides LOST_AFTER_S (seconds, at least 1)
# (Ray itself ends a driver whose head is unreachable after 60 s, with a C++ log line and no cleanup.)


class ClusterWatch:
    """Notices a cluster that went away while the driver waits: the head's GCS port refusing
    connections, or no alive node left to run tasks, for LOST_AFTER_S (or $D2_SFM_RAY_LOST_AFTER_S)
    seconds in a row."""

    def __init__(self, ray: Any):
        self.ray = ray
        self.since: float | None = None
        self.lost_after = lost_after_seconds()
        host, _, port = str(ray.get_runtime_context().gcs_address).rpartition(":")
        self.head = (host.strip("[]"), int(port))

    def healthy(self) -> None:
        self.since = None

    def check(self) -> None:
        problem = self.problem()
        if problem is None:
            self.since = None
            return
        self.since = self.since or time.monotonic()
        if time.monotonic() - self.since >= self.lost_after:
            disconnect(self.ray)
            raise ExecutorError(f"the Ray cluster went away ({problem} for {self.lost_after:.0f} s); items written "
                                "so far are kept, run again to resume")

    def problem(self) -> str | None:
        try:
            socket.create_connection(self.head, timeout=2.0).close()
        except OSError as error:
            return f"its head {self.head[0]}:{self.head[1]} is unreachable: {error.strerror or error}"
        try:
            alive = [node for node in self.ray.nodes() if node.get("Alive") and node.get("Resources", {}).get("CPU")]
        except Exception:  # noqa: BLE001  (the head is going down: checked again next time)
            return "its head does not answer"
        return None if alive else "no node with CPUs is left"


def worker_device(config: ExecutorConfig, device: str) -> str:
    """The torch device Ray tasks use: `device`, or "cuda" for GPU tasks, which need both --device
    cuda and --ray-gpus-per-task > 0 (Ray then hands each task its own GPU); CPU tasks neither."""
    try:
        wants_gpu = torch_device_type(device) == "cuda"
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not a torch device name (e.g. cpu, cuda)") from None
    if not config.is_ray:
        return device
    if wants_gpu != (config.ray_gpus_per_task > 0):
        raise ConfigError(f"--device {device} with --ray-gpus-per-task {config.ray_gpus_per_task:g}: GPU workers "
                          "need both --device cuda and --ray-gpus-per-task > 0, CPU workers neither")
    return "cuda" if wants_gpu else device  # Ray shows each GPU task only the GPU(s) it was given


def torch_device_type(device: str) -> str:
    import torch  # noqa: PLC0415  (keeps this module light for argument parsing)

    return torch.device(device).type


def check_ray_available(config: ExecutorConfig) -> None:
    """Fail early (before outputs are touched) when Ray is asked for but not installed, or when
    $D2_SFM_RAY_LOST_AFTER_S is not a usable number."""
    if config.is_ray:
        import_ray()
        lost_after_seconds()


__all__ = ["EXECUTORS", "ExecutorConfig", "ExecutorError", "ConfigError", "add_executor_arguments",
           "executor_config_from_args", "map_unordered", "check_ray_available", "ray_session", "drain",
           "in_flight_bound", "remote_function", "worker_device"]
