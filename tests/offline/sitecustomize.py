"""Loaded by each Python process the tests start (this folder is on their PYTHONPATH), and by
conftest: looking up any host but this machine fails at once. A client that escaped the Cloud
Storage emulator then fails fast instead of reaching, or waiting for, a real Google address."""

import socket

_LOCAL = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", None, socket.gethostname()}
_lookup = socket.getaddrinfo


def _local_only(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if name not in _LOCAL and not str(name).startswith("127."):
        raise socket.gaierror(socket.EAI_NONAME, f"the tests are offline: no lookup of {name!r}")
    return _lookup(host, *args, **kwargs)


socket.getaddrinfo = _local_only
