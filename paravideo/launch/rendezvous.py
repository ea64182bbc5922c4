"""Where the process group listens: the store on MASTER_ADDR only, gloo on the interface that reaches it.

torch's own env:// rendezvous starts the TCPStore on every interface (`*:PORT`, IPv4 and IPv6), where
anyone who can reach the machine may read and write it without authentication; gloo listens on the
address the host name resolves to. A local run binds loopback only; a multi-machine run binds the
address the job uses.
"""

from __future__ import annotations

import datetime
import os
import socket
import struct
import sys

import torch

GLOO_IFNAME_ENV = "GLOO_SOCKET_IFNAME"
SIOCGIFADDR = 0x8915  # <linux/sockios.h>: an interface's IPv4 address
# torch's own rendezvous under torchrun: the agent (torchrun) hosts the store, every rank is a client.
AGENT_STORE_ENV = "TORCHELASTIC_USE_AGENT_STORE"


def _libuv_takes_listen_fd() -> bool:
    """The libuv store accepts a socket made by the caller from torch 2.8 on; older ones need the classic store."""
    major, minor = (int(p) for p in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 8)


def _listen_socket(addr: str, port: int) -> socket.socket:
    """A listening TCP socket bound to `addr`:`port` only."""
    infos = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise RuntimeError(f"rank 0 cannot listen on MASTER_ADDR:MASTER_PORT = {addr}:{port} ({err.strerror or err}); "
                           "MASTER_ADDR must be an address of rank 0's machine that the other ranks reach, and "
                           "MASTER_PORT a free port there") from None
    return sock


def make_store(rank: int, world: int, timeout: datetime.timedelta):
    """The rendezvous store for this rank, or None where torchrun's agent already hosts one.

    Rank 0 creates the listening socket itself, bound to MASTER_ADDR, and hands it to the TCPStore.
    """
    import torch.distributed as dist

    if os.environ.get(AGENT_STORE_ENV) == "True":
        return None
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    if rank != 0:
        return dist.TCPStore(addr, port, world, is_master=False, timeout=timeout)
    sock = _listen_socket(addr, port)
    libuv = _libuv_takes_listen_fd()
    return dist.TCPStore(addr, port, world, is_master=True, timeout=timeout, master_listen_fd=sock.detach(),
                         use_libuv=libuv)


def _local_address_towards(addr: str) -> str | None:
    """This machine's IPv4 address that traffic to `addr` leaves from (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((socket.gethostbyname(addr), 9))
            return probe.getsockname()[0]
    except OSError:
        return None


def _interface_of(address: str) -> str | None:
    """The name of the network interface holding IPv4 `address` (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address on this interface
            if socket.inet_ntoa(raw[20:24]) == address:
                return name
    return None


def job_address() -> str | None:
    """This rank's IPv4 address on the job's network: the one traffic to MASTER_ADDR leaves from."""
    return _local_address_towards(os.environ["MASTER_ADDR"]) if "MASTER_ADDR" in os.environ else None


def bind_gloo_to_job_interface() -> None:
    """Make gloo listen on the interface this rank uses to reach MASTER_ADDR (loopback for a local run),
    unless GLOO_SOCKET_IFNAME already says where."""
    if os.environ.get(GLOO_IFNAME_ENV):
        return
    local = job_address()
    name = _interface_of(local) if local else None
    if name is not None:
        os.environ[GLOO_IFNAME_ENV] = name
