"""serve."""

from __future__ import annotations

import json
import sys

import click

from edgecxr.cli.options import FIX_ORIENTATION_HELP, input_rules
from edgecxr.cli.output import _err
from edgecxr.core.artifacts import PRECISIONS
from edgecxr.runtime.select import BACKENDS


@click.command()
@click.option("-m", "--model", "models", multiple=True, metavar="MODEL",
              help="Model to serve (repeatable): a name (coronet, cnn-lstm, one from `edgecxr models`), a bundle "
                   "or model file (served as its folder/file name), or NAME=PATH. Default: coronet.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback needs --token (or --insecure).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port (0: any free one).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), help="Only this precision of each bundle.")
@click.option("--max-batch-size", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Dynamic batching: most images in one model run.")
@click.option("--max-delay-ms", type=click.FloatRange(0, 1000), default=5.0, show_default=True,
              help="Dynamic batching: longest a request waits for others to fill its batch.")
@click.option("--max-queue", type=click.IntRange(1), default=64, show_default=True,
              help="Images queued or running per model before requests get 503 + Retry-After.")
@click.option("--max-body-mb", type=click.FloatRange(0.001), default=64.0, show_default=True,
              help="Largest request body (413 beyond it).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.1), default=30.0, show_default=True,
              help="Seconds for a request body to arrive, and again for its answer (408 / 504).")
@click.option("--drain-timeout", "drain_s", type=click.FloatRange(0), default=30.0, show_default=True,
              help="On SIGINT/SIGTERM, seconds to let requests in flight finish.")
@click.option("--token", envvar="EDGECXR_SERVE_TOKEN", show_envvar=True,
              help="Require 'Authorization: Bearer TOKEN' (all but /v2/health/*). Prefer the variable: argv is public.")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without a token.")
@click.option("--no-input-checks", is_flag=True, help="/v1/classify: send every decodable input to the model.")
@click.option("--fix-orientation", is_flag=True, help="/v1/classify: " + FIX_ORIENTATION_HELP)
@click.option("--allow-rejected", is_flag=True, help="Serve a model file the accuracy gate rejected (*.rejected.*).")
@click.option("--json", "as_json", is_flag=True, help="When ready, print one JSON line (url, port, models) to stdout.")
def serve(models: tuple[str, ...], host: str, port: int, backend: str, precision: str | None, max_batch_size: int,
          max_delay_ms: float, max_queue: int, max_body_mb: float, timeout_s: float, drain_s: float,
          token: str | None, insecure: bool, no_input_checks: bool, fix_orientation: bool, allow_rejected: bool, as_json: bool) -> None:
    """Serve models over HTTP: the KServe v2 Open Inference Protocol (tritonclient works) and /v1/classify.

    \b
    Endpoints:
      GET  /v2/health/live, /v2/health/ready     (ready: models loaded and warmed up)
      GET  /v2, /v2/models/NAME[/ready|/config]
      POST /v2/models/NAME/infer                  (preprocessed FP32 NHWC tensor -> probabilities)
      POST /v1/classify[?model=NAME]              (PNG/JPEG/DICOM file -> the JSON of `infer --json`)
      GET  /metrics                               (Prometheus)

    Requests arriving together run as one batch (--max-batch-size, --max-delay-ms); past --max-queue
    the answer is 503 with Retry-After. Ctrl-C or SIGTERM drains requests in flight, then exits.
    See docs/SERVING.md.

    \b
    Examples:
      edgecxr serve                                  (coronet on http://127.0.0.1:8000)
      edgecxr serve -m coronet -m cnn-lstm --port 8080
      EDGECXR_SERVE_TOKEN=secret edgecxr serve --host 0.0.0.0 -m mine=runs/coronet
    """
    from edgecxr.serve.config import ServeConfig, is_loopback, token_from_env
    from edgecxr.serve.models import ModelSpec
    from edgecxr.serve.server import bind, check_dependencies
    from edgecxr.serve.server import serve as run_server

    check_dependencies()
    token = token_from_env(token)
    if not is_loopback(host) and token is None and not insecure:
        raise click.UsageError(f"--host {host} is reachable from other machines: give --token (or "
                               "EDGECXR_SERVE_TOKEN), or --insecure to serve patient images without one")
    specs = tuple(ModelSpec.parse(m) for m in (models or ("coronet",)))
    try:
        config = ServeConfig(specs, host=host, port=port, backend=backend, precision=precision,
                             input_rules=input_rules(no_input_checks, fix_orientation), allow_rejected=allow_rejected,
                             max_batch=max_batch_size, max_delay_ms=max_delay_ms, max_queue=max_queue,
                             max_body_bytes=int(max_body_mb * (1 << 20)), timeout_s=timeout_s, drain_s=drain_s,
                             token=token)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = sock.getsockname()[1]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{bound}"
    if no_input_checks:
        _err("warning: --no-input-checks: /v1/classify sends every decodable input to the model")

    def ready(state) -> None:  # noqa: ANN001 - ServiceState
        for served in state.models.values():
            _err(f"{served.name}: {served.classifier.describe()}")
            if "warning" in served.classifier.backend_info:
                _err(f"warning: {served.name}: {served.classifier.backend_info['warning']}")
        _err(f"ready: {url} (models: {', '.join(state.models)}; Ctrl-C to stop)")
        if as_json:
            click.echo(json.dumps({"url": url, "host": host, "port": bound, "models": list(state.models),
                                   "token": token is not None}))
            sys.stdout.flush()

    state = run_server(config, on_ready=ready, sock=sock)
    if state.failure is not None:
        from edgecxr.core.errors import EdgeCXRError

        if isinstance(state.failure, EdgeCXRError):
            raise state.failure  # its own one-line message and exit code
        raise click.ClickException(state.error or type(state.failure).__name__)
    _err("stopped")
