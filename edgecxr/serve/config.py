"""What `edgecxr serve` was told: one frozen config, so the app, the CLI and the tests agree on defaults.

The defaults are for one workstation beside one scanner: loopback only, batches of up to 8 that
wait at most 5 ms for company, room for 64 queued images (a few seconds of work on a GPU; beyond
that a client is better told 503 and Retry-After than left waiting), 64 MiB bodies (an
uncompressed full-size DICOM radiograph is ~20-50 MB; an FP32 tensor for CoroNet is 270 kB) and 30 s
per request phase.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from edgecxr.runtime.input_checks import DEFAULT_RULES, InputRules
from edgecxr.serve.models import ModelSpec

#: environment variable holding the bearer token (so it need not appear in `ps` output)
ENV_TOKEN = "EDGECXR_SERVE_TOKEN"
#: paths answered without a token, so probes and load balancers need no secret
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


@dataclass(frozen=True)
class ServeConfig:
    """Everything that shapes the service (see `edgecxr serve --help` for each)."""

    models: tuple[ModelSpec, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "auto"
    precision: str | None = None
    input_rules: InputRules | None = DEFAULT_RULES  #: None: --no-input-checks
    allow_rejected: bool = False
    max_batch: int = 8
    max_delay_ms: float = 5.0
    max_queue: int = 64
    max_body_bytes: int = 64 << 20
    timeout_s: float = 30.0
    drain_s: float = 30.0
    token: str | None = None

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("serve at least one model")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must differ, got {names} (use NAME=PATH to rename one)")
        if self.max_batch < 1 or self.max_queue < self.max_batch:
            raise ValueError("max_batch must be >= 1 and max_queue >= max_batch")
        if self.max_delay_ms < 0 or self.timeout_s <= 0 or self.max_body_bytes < 1:
            raise ValueError("max_delay_ms must be >= 0, timeout_s and max_body_bytes > 0")

    @property
    def default_model(self) -> str:
        return self.models[0].name


def token_from_env(given: str | None) -> str | None:
    """The token: the one given, else $EDGECXR_SERVE_TOKEN, else None (no token asked)."""
    token = given if given is not None else os.environ.get(ENV_TOKEN)
    return token or None


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost': addresses other machines cannot reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
