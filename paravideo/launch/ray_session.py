"""Connect this driver to a Ray cluster, or start a private local instance, for the length of a job."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator

from paravideo.config import LaunchConfig
from paravideo.errors import ConfigError
from paravideo.launch.ray_address import AUTO, LOCAL
from paravideo.launch.stop import keep_stop_handlers

# A private instance needs no login: it is reached only by this driver's own processes.
LOCAL_INSTANCE_ENV = {"RAY_AUTH_MODE": "disabled"}


@contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables (unless already set) for the processes started inside, then restore."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _connect(address: str) -> bool:
    """Join a running cluster; False when `auto` finds none."""
    import ray

    try:
        ray.init(address=address)
    except ConnectionError as err:
        if address == AUTO:
            return False
        raise ConfigError(f"launch.ray_address: cannot connect to the Ray cluster at {address}: {err}") from None
    return True


@contextmanager
def ray_session(launch: LaunchConfig) -> Iterator[None]:
    """Use the Ray connection this process already has, else connect or start one; undo what was done."""
    import ray

    if ray.is_initialized():
        yield
        return
    with keep_stop_handlers():  # ray.init replaces the SIGTERM handler; the job's own must stay
        connected = launch.ray_address != LOCAL and _connect(launch.ray_address)
    if connected:
        try:
            yield
        finally:
            ray.shutdown()
        return
    temp_dir = launch.ray_temp_dir or tempfile.mkdtemp(prefix="paravideo-ray-")
    print(f"paravideo: starting a local Ray instance (temp dir {temp_dir})", file=sys.stderr, flush=True)
    with _env(LOCAL_INSTANCE_ENV), keep_stop_handlers():
        ray.init(num_cpus=launch.ray_num_cpus, include_dashboard=False, _temp_dir=temp_dir)
    try:
        yield
    finally:
        ray.shutdown()
        if launch.ray_temp_dir is None:
            shutil.rmtree(temp_dir, ignore_errors=True)
