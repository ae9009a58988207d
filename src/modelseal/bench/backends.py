"""Where bench jobs run: `local` (in this process, one after another) or `ray` (one Ray task per job, one
CPU each). A backend maps a job function over argument tuples and yields (index, result) as results
arrive; `share` puts a big value in the object store once (`Shared(name)` refers to it in arguments)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..errors import ModelSealError


class LocalBackend:
    """Runs jobs in this process, one after another."""

    def map(self, fn: Callable, calls: list[tuple], shared: dict[str, Any] | None = None) -> Iterable:
        for i, args in enumerate(calls):
            yield i, fn(*[shared[a.name] if isinstance(a, Shared) else a for a in args])

    def share(self, value: Any) -> Any:
        return value

    def close(self) -> None:
        pass


class Shared:
    def __init__(self, name: str):
        self.name = name


class RayBackend:
    """Runs every job as a Ray task (one CPU each); big blobs go through the object store once."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
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
        self._remote: dict[Callable, Any] = {}

    def share(self, value: Any) -> Any:
        return self.ray.put(value)

    def map(self, fn: Callable, calls: list[tuple], shared: dict[str, Any] | None = None) -> Iterable:
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(num_cpus=1, max_retries=0)(fn)
        remote = self._remote[fn]
        pending = {}
        for i, args in enumerate(calls):
            ref = remote.remote(*[shared[a.name] if isinstance(a, Shared) else a for a in args])
            pending[ref] = i
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


def make_backend(backend: str, address: str | None = None, num_cpus: int | None = None):
    if backend == "local":
        if address:
            raise ModelSealError("--address applies to the ray backend only")
        return LocalBackend()
    if backend == "ray":
        return RayBackend(address, num_cpus)
    raise ModelSealError(f"unknown backend '{backend}'; use 'local' or 'ray'")
