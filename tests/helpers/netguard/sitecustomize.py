"""A recorder of outgoing network use, for every Python process that has this folder on ``PYTHONPATH``.

Python imports ``sitecustomize`` at start-up; with ``NETGUARD_LOG_DIR`` set, this one wraps
``socket.getaddrinfo``, ``socket.gethostbyname``, ``socket.create_connection`` and ``socket.socket.connect`` /
``connect_ex``, and appends one JSON line per distinct call to ``NETGUARD_LOG_DIR/<pid>.jsonl``: the
process's command line, what was called and with which host or address. The first line of each file is
the process itself (``"kind": "start"``) with the usage-reporting variables it started with. It records,
it does not block: every call goes on as it would. Another ``sitecustomize`` further down ``sys.path`` is
still run. Read by ``tests/helpers/network.py``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import socket
import sys
import threading

_DIR = os.environ.get("NETGUARD_LOG_DIR")
_WATCHED_ENV = ("MLFLOW_DISABLE_TELEMETRY", "RAY_USAGE_STATS_ENABLED", "RAY_USAGE_STATS_REPORT_URL")
_seen: set[tuple] = set()
_lock = threading.Lock()


def _cmdline() -> str:
    try:
        with open("/proc/self/cmdline", "rb") as f:  # follows setproctitle (ray::ServeReplica..., ray::IDLE)
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:300]
    except OSError:
        return " ".join(sys.argv)[:300]


def _write(**record) -> None:
    """Append ``record`` once per process; a recorder must never break the process it watches."""
    try:
        key = (os.getpid(), *(repr(record.get(name)) for name in ("kind", "host", "port", "address")))
        with _lock:
            if key in _seen:
                return
            _seen.add(key)
        line = json.dumps({"pid": os.getpid(), "cmdline": _cmdline(), **record}, default=repr)
        with open(os.path.join(_DIR, f"{os.getpid()}.jsonl"), "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except Exception:  # noqa: BLE001 - anything: the watched call goes on regardless
        pass


def _name(value) -> str:
    return getattr(value, "name", str(value))


def _address(address) -> object:
    if isinstance(address, tuple):
        return [str(part) if i == 0 else part for i, part in enumerate(address[:2])]  # host (or IP), port
    return address if isinstance(address, str) else repr(address)  # AF_UNIX path, abstract socket name


def _install() -> None:
    getaddrinfo, gethostbyname = socket.getaddrinfo, socket.gethostbyname
    create_connection = socket.create_connection
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def recorded_getaddrinfo(host, port, *args, **kwargs):
        _write(kind="getaddrinfo", host=host, port=port)
        return getaddrinfo(host, port, *args, **kwargs)

    def recorded_gethostbyname(host):
        _write(kind="gethostbyname", host=host)
        return gethostbyname(host)

    def recorded_create_connection(address, *args, **kwargs):
        _write(kind="create_connection", address=_address(address))
        return create_connection(address, *args, **kwargs)

    def recorded_connect(self, address):
        _write(kind="connect", family=_name(self.family), type=_name(self.type), address=_address(address))
        return connect(self, address)

    def recorded_connect_ex(self, address):
        _write(kind="connect_ex", family=_name(self.family), type=_name(self.type), address=_address(address))
        return connect_ex(self, address)

    socket.getaddrinfo, socket.gethostbyname = recorded_getaddrinfo, recorded_gethostbyname
    socket.create_connection = recorded_create_connection
    socket.socket.connect, socket.socket.connect_ex = recorded_connect, recorded_connect_ex
    _write(kind="start", env={key: os.environ.get(key) for key in _WATCHED_ENV})


def _chain() -> None:
    """Run the ``sitecustomize`` this one shadows, if there is one further down ``sys.path``."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None and os.path.abspath(spec.origin or "") != os.path.abspath(__file__):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


if _DIR:
    os.makedirs(_DIR, exist_ok=True)
    _install()
_chain()
