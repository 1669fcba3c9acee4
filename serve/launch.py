"""`turnout serve`: validate the config, prepare artifacts, start a local Ray with Serve, run until stopped.

The same file and the same builder as `serve run FILE`; what this adds is the order of things on a fresh
machine: every check and every artifact build happens in this process before Ray starts, so a mistake is one
line and no replica ever trains or crashes on a missing file.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable

from index.errors import ConfigError, TurnoutError
from serve.config import ServeFile, TurnoutConfig, check_exposure, load_serve_file, parse_app_args

log = logging.getLogger(__name__)

DEFAULT_METRICS_PORT = 8080  # what KubeRay and the Prometheus scrape config expect on every Ray pod
# Ray Serve settings read from the environment by every Ray process; the KubeRay manifests set the same.
# gRPC between proxy and replicas instead of Ray actor calls: measured with the length router (Ray overhead
# only), it raised the 32-client throughput and cut the 1-client p50 (see BENCHMARKS.md, 'Serving'). It is one of
# the settings of Ray's own RAY_SERVE_THROUGHPUT_OPTIMIZED mode; the rest of that mode (direct ingress, user code
# on the main loop) was slower here (same section).
RAY_SERVE_ENV = {"RAY_SERVE_USE_GRPC_BY_DEFAULT": "1"}


def apply_ray_env() -> None:
    """Set RAY_SERVE_ENV where the environment does not already choose; call before ray.init."""
    for key, value in RAY_SERVE_ENV.items():
        os.environ.setdefault(key, value)


class DeployError(TurnoutError):
    """Ray Serve could not bring the application up."""

    http_status = 503
    code = "deploy_failed"


def configure(path: str | None = None, *, home: str | None = None, data_dir: str | None = None,
              embedder: str | None = None, host: str | None = None, port: int | None = None) -> ServeFile:
    """Load and validate the config file (or the embedded default) and apply command-line overrides."""
    served = load_serve_file(path=path)
    overrides = {k: v for k, v in {"home": home, "data_dir": data_dir, "embedder": embedder}.items() if v is not None}
    config = served.config
    if overrides:
        dumped = config.model_dump()
        dumped["artifacts"].update(overrides)
        config = parse_app_args(dumped, "command line")
    document = dict(served.document)
    http = dict(document.get("http_options") or {})
    if host is not None:
        http["host"] = host
    if port is not None:
        if not 0 < port < 65536:
            raise ConfigError(f"--port must be in 1..65535, got {port}")
        http["port"] = port
    document["http_options"] = http
    check_exposure(config, http.get("host", "127.0.0.1"), path or "default config")
    return ServeFile(document, served.app_index, config)


def _check_port(host: str, port: int, what: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"{what} port {port} on {host} is not available ({exc.strerror})") from None


def serve_forever(served: ServeFile, metrics_port: int = DEFAULT_METRICS_PORT,
                  on_status: Callable[[str], None] = log.info, stop: threading.Event | None = None) -> None:
    """Prepare, start Ray + Serve, deploy the file, report the URL through `on_status`, block until SIGINT/SIGTERM or `stop`."""
    from serve.artifacts import prepare

    _check_port(served.host, served.port, "HTTP")
    _check_port("127.0.0.1", metrics_port, "metrics")
    on_status(f"preparing artifacts ({served.config.artifacts.embedder} embedder) ...")
    config = prepare(served.config, on_status)
    on_status(f"artifacts ready in {config.artifacts.home}; starting Ray Serve ...")

    import ray
    from ray import serve

    stop = stop or threading.Event()
    previous = {}
    apply_ray_env()
    if config.capture.enabled:  # every replica signs request ids with the same secret (inherited by Ray's workers)
        import secrets

        os.environ.setdefault(config.capture.secret_env, secrets.token_hex(32))
    # address="local": always a fresh local cluster, never whatever RAY_ADDRESS or a running `ray start` points to.
    ray.init(address="local", include_dashboard=False, _metrics_export_port=metrics_port, log_to_driver=False)
    try:
        if threading.current_thread() is threading.main_thread():  # after ray.init, which sets its own handlers
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: stop.set())
        deploy(served, config, on_status, stop)
        prefix = served.route_prefix.rstrip("/")
        url = f"http://{served.host}:{served.port}{prefix}"
        on_status(f"turnout is serving at {url} (metrics http://127.0.0.1:{metrics_port}/metrics); Ctrl-C stops it")
        if not config.api.auth.configured:
            where = "this machine only" if served.host in ("127.0.0.1", "localhost", "::1") else "the network"
            on_status(f"auth is off (no api.auth keys configured): open to {where}")
        while not stop.wait(0.5):
            pass
        on_status("stopping ...")
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def deploy(served: ServeFile, config: TurnoutConfig, on_status: Callable[[str], None] = log.info,
           stop: threading.Event | None = None) -> None:
    """Start Serve with the file's HTTP options and deploy the file with the turnout args replaced by the
    prepared `config`; returns once it runs."""
    from ray.serve._private.api import serve_start

    document = dict(served.document)
    apps = [dict(app) for app in document["applications"]]
    apps[served.app_index]["args"] = config.model_dump(mode="json")
    document["applications"] = apps
    document["http_options"] = {**document.get("http_options", {}), "host": served.host, "port": served.port}
    from ray.exceptions import RayError

    try:
        client = serve_start(http_options=document["http_options"],
                             proxy_location=document.get("proxy_location", "HeadOnly"))
    except RayError as exc:  # e.g. the HTTP proxy died or missed Ray's start timeout: Ray's fault, said in one line
        log.error("starting Ray Serve failed: %s", exc)
        raise DeployError(f"Ray Serve did not start its HTTP proxy on {served.host}:{served.port}: "
                          f"{type(exc).__name__} (run with -v for details)") from None
    run_document(document, client, on_status, stop)


def run_document(document: dict, client=None, on_status: Callable[[str], None] = log.info,
                 stop: threading.Event | None = None, timeout_s: float | None = None) -> None:
    """Deploy a whole Serve config document the way `serve run FILE` does (Ray builds each application from its
    import_path and args and applies its `deployments:` overrides); return once every application runs.

    Declarative, as Ray's config files are: applications running but absent from `document` are removed.
    DeployError with the first line of Ray's message when one fails.
    """
    import time

    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ApplicationStatus, ServeDeploySchema

    schema = ServeDeploySchema.model_validate(document)
    (client or _get_global_client()).deploy_apps(schema)
    names = [app.name for app in schema.applications]
    start = last = time.monotonic()
    while stop is None or not stop.is_set():
        apps = serve.status().applications
        statuses = {n: apps[n].status if n in apps else ApplicationStatus.NOT_STARTED for n in names}
        if all(status == ApplicationStatus.RUNNING for status in statuses.values()):
            return
        for name, status in statuses.items():
            if status in (ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY):
                message = apps[name].message
                log.error("deploying %s failed: %s", name, message)
                first = next((line for line in message.splitlines() if line.strip()), status.value)
                raise DeployError(f"application {name!r} did not start: {first.strip()} (run with -v for details)")
        now = time.monotonic()
        if timeout_s is not None and now - start > timeout_s:
            raise DeployError(f"applications did not start within {timeout_s:.0f}s: "
                              f"{ {n: s.value for n, s in statuses.items()} }")
        if now - last >= 10.0:
            on_status(f"waiting for the deployments ({now - start:.0f}s): "
                      f"{', '.join(f'{n} {s.value}' for n, s in statuses.items())}")
            last = now
        time.sleep(0.25)
