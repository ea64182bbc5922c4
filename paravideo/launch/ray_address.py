"""`launch.ray_address`: parse it and check that it answers, without importing Ray."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from paravideo.errors import ConfigError

AUTO, LOCAL = "auto", "local"
CLIENT_SCHEME = "ray://"
GCS_PORT, CLIENT_PORT = 6379, 10001
FORMS = "auto, local, HOST:PORT (a head's GCS, port 6379 by default) or ray://HOST:PORT (Ray client)"


@dataclass(frozen=True)
class RayAddress:
    """A cluster address: `host`:`port`, reached through the Ray client when `client`."""

    host: str
    port: int
    client: bool

    def __str__(self) -> str:
        return f"{CLIENT_SCHEME if self.client else ''}{self.host}:{self.port}"


def parse_ray_address(value: str) -> RayAddress | None:
    """None for auto / local; a RayAddress for HOST[:PORT] or ray://HOST[:PORT]; ValueError otherwise."""
    if value in (AUTO, LOCAL):
        return None
    client = value.startswith(CLIENT_SCHEME)
    rest = value.removeprefix(CLIENT_SCHEME)
    host, sep, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if not host or any(c in host for c in "/ @") or (sep and not port.isdigit()):
        raise ValueError(f"{value!r} is not a Ray address; use {FORMS}")
    number = int(port) if sep else (CLIENT_PORT if client else GCS_PORT)
    if not 0 < number < 65536:
        raise ValueError(f"port {number} of {value!r} is out of range 1-65535")
    return RayAddress(host.strip("[]"), number, client)


def address_to_check(value: str) -> tuple[RayAddress, str] | None:
    """The address `ray.init` will dial for this setting, and where it came from (None: nothing to dial)."""
    if value == LOCAL:
        return None
    if value == AUTO:
        env = os.environ.get("RAY_ADDRESS", "")
        # "auto" or "local" in the env var lets Ray search; only a concrete address can be dialled.
        if not env or env in (AUTO, LOCAL) or env.startswith("http"):
            return None
        try:
            return parse_ray_address(env), "the RAY_ADDRESS environment variable"
        except ValueError as err:
            raise ConfigError(f"launch.ray_address is auto but RAY_ADDRESS={env!r} is malformed: {err}") from None
    return parse_ray_address(value), "launch.ray_address"


def check_ray_address(value: str, *, timeout_s: float) -> None:
    """Raise ConfigError unless the cluster address in use accepts a TCP connection within `timeout_s`."""
    target = address_to_check(value)
    if target is None:
        return
    address, source = target
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout_s):
            return
    except OSError as err:
        reason = "no answer" if isinstance(err, TimeoutError) else (err.strerror or str(err))
    raise ConfigError(
        f"launch.ray_address: the Ray cluster at {address} (from {source}) is unreachable ({reason}, "
        f"waited up to {timeout_s:g} s, launch.ray_connect_timeout_s); start a head there with "
        f"`ray start --head`, fix the address, or set launch.ray_address: local to start a private Ray instance")
