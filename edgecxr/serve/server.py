"""Running the app: uvicorn on a socket we bind ourselves, in the foreground or in a thread.

Binding the socket here (not in uvicorn) lets `--port 0` pick a free port that is known before the
first request (tests, the load test). Shutdown is uvicorn's graceful one: on SIGINT/SIGTERM it
stops accepting connections, lets the requests in flight finish (up to `drain_s`), then the app's
shutdown runs whatever is still queued and closes the models; `/v2/health/ready` says 503 from the
first signal on, so a load balancer stops sending work. After a drain the process exits 0.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgecxr.core.errors import MissingDependencyError
from edgecxr.core.lazy import available
from edgecxr.serve.app import ServiceState, create_app
from edgecxr.serve.config import ServeConfig

#: seconds an idle keep-alive connection stays open (longer than clients' pool expiry: httpx's is 5 s)
KEEP_ALIVE_S = 30
#: the packages of the `serve` extra (checked before anything starts)
REQUIRES = ("starlette", "uvicorn", "prometheus_client", "multipart")


def check_dependencies() -> None:
    """Raise MissingDependencyError naming the `serve` extra when one of its packages is missing."""
    for module in REQUIRES:
        if not available(module):
            raise MissingDependencyError(module, "serve", "edgecxr serve")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one), IPv6 where the host is IPv6."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY on accepted connections only for
    # sockets that say they are TCP; without it Nagle + delayed ACK added ~40 ms to every small answer
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _server(config: ServeConfig, on_ready: Callable[[ServiceState], None] | None) -> tuple[Any, ServiceState]:
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            state.draining = True  # ready -> 503 at once, before the listening socket closes
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after its graceful shutdown (the process then dies of
            # it); a drained service exits normally instead, so `serve` can say so and exit 0
            getattr(self, "_captured_signals", []).clear()

    def fatal(_state: ServiceState) -> None:
        server.should_exit = True

    app, state = create_app(config, on_ready=on_ready, on_fatal=fatal)
    # keep-alive 30 s, not uvicorn's 5 s: the server closing a connection at the moment a (slow, busy)
    # client reuses it loses that request on the client side (the load test saw "connection reset")
    uv = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False, timeout_keep_alive=KEEP_ALIVE_S,
                        timeout_graceful_shutdown=config.drain_s, server_header=False)
    server = Server(uv)
    return server, state


def serve(config: ServeConfig, on_ready: Callable[[ServiceState], None] | None = None,
          sock: socket.socket | None = None) -> ServiceState:
    """Serve in the foreground until SIGINT/SIGTERM (or a model fails to load: `state.error`)."""
    check_dependencies()
    sock = sock or bind(config.host, config.port)
    server, state = _server(config, on_ready)
    server.run(sockets=[sock])
    return state


@dataclass
class RunningServer:
    """A server running in a thread (tests, the load test): its URL, state, and how to stop it."""

    url: str
    port: int
    state: ServiceState
    server: Any
    thread: threading.Thread

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful shutdown, as on SIGTERM: in-flight requests finish first."""
        self.state.draining = True
        self.server.should_exit = True
        self.thread.join(timeout)


def start_in_thread(config: ServeConfig, timeout: float = 120.0) -> RunningServer:
    """Start the service in a daemon thread on config.host:config.port and wait until it is ready.

    Raises RuntimeError with the reason when a model fails to load or it is not ready in time.
    """
    check_dependencies()
    sock = bind(config.host, config.port)
    port = sock.getsockname()[1]
    done = threading.Event()
    server, state = _server(config, lambda _s: done.set())
    original = state.on_fatal

    def fatal(s: ServiceState) -> None:
        done.set()
        if original is not None:
            original(s)

    state.on_fatal = fatal
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="edgecxr-serve", daemon=True)
    thread.start()
    host = f"[{config.host}]" if ":" in config.host else config.host
    running = RunningServer(f"http://{host}:{port}", port, state, server, thread)
    if not done.wait(timeout) or state.error:
        running.stop()
        raise RuntimeError(state.error or f"the service was not ready within {timeout:g} s")
    return running
