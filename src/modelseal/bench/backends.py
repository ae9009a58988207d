"""Where bench jobs run: `local` (in this process, one after another) or `ray` (one Ray task per job, one CPU
each, and a GPU share when the bench's device is CUDA: see `ray_task_options`). A backend maps a job function
over job specs (`jobs.TrainJob`, ...) and yields (index, result) as results arrive; `share` puts a big value
in the object store once, and a spec field holding `Shared(name)` receives that value when the job runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

from ..errors import ModelSealError

J = TypeVar("J")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class Shared:
    """A big value (bytes or a list of bytes) that the backend shares once; `name` looks it up."""

    name: str


def _handles(job: Any) -> dict[str, str]:
    """The fields of a job spec that hold a `Shared` handle: field name -> shared name."""
    return {f.name: v.name for f in dataclasses.fields(job) if isinstance(v := getattr(job, f.name), Shared)}


def _call(fn: Callable[[Any], R], job: Any, **values: Any) -> R:
    """Run `fn` on `job` with its shared fields replaced by their values."""
    return fn(dataclasses.replace(job, **values))


def ray_task_options(device: str | None, cluster_gpus: float = 0.0, gpus_per_task: float = 1.0
                     ) -> dict[str, Any]:
    """The `ray.remote` options of one bench job on `device`.

    Ray hides every GPU from a task that asks for none (it sets CUDA_VISIBLE_DEVICES to empty), so a job
    whose device is CUDA must ask for a GPU share: `cuda` / `cuda:N` always (Ray picks the GPU; the index
    is the task's own view), `auto` when the cluster has GPUs (`cluster_gpus`), so that auto means CUDA on
    the workers exactly when there is one to have. `gpus_per_task` < 1 packs several small jobs on one GPU.
    """
    opts: dict[str, Any] = {"num_cpus": 1, "max_retries": 0}
    dev = (device or "cpu").strip().lower()
    if dev.startswith("cuda") or (dev == "auto" and cluster_gpus > 0):
        if gpus_per_task <= 0 or (gpus_per_task > 1 and not float(gpus_per_task).is_integer()):
            raise ModelSealError(f"GPUs per bench job must be a fraction in (0, 1] or a whole number, "
                                 f"got {gpus_per_task}")
        opts["num_gpus"] = gpus_per_task
    return opts


class Backend(Protocol):
    def map(self, fn: Callable[[J], R], jobs: list[J], shared: dict[str, Any] | None = None
            ) -> Iterator[tuple[int, R]]: ...

    def share(self, value: Any) -> Any: ...

    def close(self) -> None: ...


class LocalBackend:
    """Runs jobs in this process, one after another."""

    def map(self, fn: Callable[[J], R], jobs: list[J], shared: dict[str, Any] | None = None
            ) -> Iterator[tuple[int, R]]:
        for i, job in enumerate(jobs):
            yield i, _call(fn, job, **{f: (shared or {})[n] for f, n in _handles(job).items()})

    def share(self, value: Any) -> Any:
        return value

    def close(self) -> None:
        pass


class RayBackend:
    """Runs every job as a Ray task (one CPU each); big blobs go through the object store once (Ray
    resolves object references given as task arguments, so each shared field travels as one)."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, device: str | None = None):
        try:
            import ray
        except ImportError:
            raise ModelSealError("the ray backend needs Ray: pip install 'ray>=2.9'") from None
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False}
            if address:
                kw["address"] = address
            else:
                kw["num_cpus"] = num_cpus
            try:
                ray.init(**kw)
            except Exception as e:  # ConnectionError and friends, as one line
                raise ModelSealError(f"cannot start or reach Ray ({address or 'local'}): {e}") from None
            self.started = True
        gpus = float(ray.cluster_resources().get("GPU", 0.0)) if (device or "").lower() == "auto" else 0.0
        self.options = ray_task_options(device, gpus)
        self._remote: Any = ray.remote(**self.options)(_call)

    def share(self, value: Any) -> Any:
        return self.ray.put(value)

    def map(self, fn: Callable[[J], R], jobs: list[J], shared: dict[str, Any] | None = None
            ) -> Iterator[tuple[int, R]]:
        pending = {}
        for i, job in enumerate(jobs):
            refs = {f: (shared or {})[n] for f, n in _handles(job).items()}
            pending[self._remote.remote(fn, job, **refs)] = i
        try:
            while pending:
                done, _ = self.ray.wait(list(pending), num_returns=1)
                for ref in done:
                    yield pending.pop(ref), self.ray.get(ref)
        finally:
            for ref in pending:
                self.ray.cancel(ref, force=True)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def make_backend(backend: str, address: str | None = None, num_cpus: int | None = None,
                 device: str | None = None) -> Backend:
    """`device` is the bench's device: the Ray backend gives CUDA jobs a GPU (`ray_task_options`)."""
    if backend == "local":
        if address:
            raise ModelSealError("--address applies to the ray backend only")
        return LocalBackend()
    if backend == "ray":
        return RayBackend(address, num_cpus, device)
    raise ModelSealError(f"unknown backend '{backend}'; use 'local' or 'ray'")
