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

# Ray's authentication switch, left alone: a private instance keeps Ray's default (token authentication,
# the token in ~/.ray/auth_token, made by Ray when missing). On a Linux machine with a routable address
# Ray binds its GCS, raylet and workers to every interface (a loopback node address is replaced), so
# even a private instance is reachable beyond loopback.
AUTH_MODE_ENV = "RAY_AUTH_MODE"


def _warn_if_unauthenticated() -> None:
    """Say so when the environment turns authentication off for the instance about to start."""
    if os.environ.get(AUTH_MODE_ENV, "").lower() == "disabled":
        print(f"paravideo: warning: {AUTH_MODE_ENV}=disabled in the environment: the local Ray instance "
              "accepts unauthenticated connections on every interface of this machine; unset it to keep "
              "Ray's token authentication", file=sys.stderr, flush=True)


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
    _warn_if_unauthenticated()
    with keep_stop_handlers():
        ray.init(num_cpus=launch.ray_num_cpus, include_dashboard=False, _temp_dir=temp_dir)
    try:
        yield
    finally:
        ray.shutdown()
        if launch.ray_temp_dir is None:
            shutil.rmtree(temp_dir, ignore_errors=True)
