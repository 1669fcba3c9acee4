"""Service configuration: one YAML in Ray Serve's own config file format, validated before any replica starts.

The file is what `serve run`, `serve deploy` and KubeRay's `serveConfigV2` read: Ray's top level
(`http_options`, `applications[]`) plus, for the turnout application, `import_path: serve.app:build_app` and
`args`. `args` is a `TurnoutConfig`; Ray itself validates it against the builder's annotation, and
`turnout serve` validates the whole file (Ray's schema for Ray's part, ours for `args`) before starting Ray.

`DEFAULT_CONFIG_YAML` is the embedded default: CPU, offline, the packaged MiniLM embedder, routers sw_ranking,
mf, length and random, a strong-call share of 0.5 held by the live controller, upstreams on localhost.
`turnout serve --print-config` writes it out as a starting point. causal_llm is opt-in (it needs a checkpoint
that `turnout train causal_llm` takes many CPU minutes to build; see BENCHMARKS.md, 'Classifier routers'):
`deploy/causal.yaml` enables it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.errors import ConfigError

log = logging.getLogger(__name__)

APP_IMPORT_PATH = "serve.app:build_app"
# Routers the serving layer has a backend for. The retrieval deployment embeds a prompt once and serves every
# embedding router from that vector; the local ones are cheap enough to run inside the router deployment; the
# classifier deployment hosts the causal LM in vLLM's classify runner (serve/classifier.py).
RETRIEVAL_ROUTERS = ("sw_ranking", "mf")
LOCAL_ROUTERS = ("length", "random")
CLASSIFIER_ROUTERS = ("causal_llm",)
SERVED_ROUTERS = RETRIEVAL_ROUTERS + LOCAL_ROUTERS + CLASSIFIER_ROUTERS
# Enabled when a config names none: everything that `turnout serve` can build on a fresh machine by itself.
DEFAULT_ROUTERS = RETRIEVAL_ROUTERS + LOCAL_ROUTERS
SIDES = ("strong", "weak")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------------------------------------- routing


class RoutersConfig(_Strict):
    enabled: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ROUTERS),
        description="routers this service loads; a request may name any of them",
        min_length=1,
    )
    default: str = Field("sw_ranking", description="router used when a request names none (and for model 'turnout'); "
                         "chosen on the dev benchmarks and the obvious-prompts check (BENCHMARKS.md)")
    strong_model: str = Field(
        "gpt-4-1106-preview",
        description="the strong model as named in the training data: p_strong = P(it beats weak_model)",
    )
    weak_model: str = Field(
        "mistralai/Mixtral-8x7B-Instruct-v0.1", description="the weak model as named in the training data"
    )

    @field_validator("enabled")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in SERVED_ROUTERS]
        if unknown:
            raise ValueError(f"unknown or not yet servable router(s) {unknown}; servable: {list(SERVED_ROUTERS)}")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate routers in {names}")
        return names

    @model_validator(mode="after")
    def _default_enabled(self) -> RoutersConfig:
        if self.default not in self.enabled:
            raise ValueError(f"default router {self.default!r} is not in enabled {self.enabled}")
        return self


class ControllerConfig(_Strict):
    window: int = Field(
        2000,
        ge=10,
        le=1_000_000,
        description="decisions in the sliding window: the threshold is the (1 - strong_ratio) quantile of the "
        "last `window` p_strong values, and the realised strong ratio is measured over the same window. Larger "
        "is steadier, smaller follows traffic shifts faster (a shift is absorbed after about one window)",
    )
    min_live: int = Field(
        100,
        ge=1,
        description="live decisions needed before the threshold leaves its offline starting value when no "
        "reference scores seed the window",
    )


class RoutingConfig(_Strict):
    strong_ratio: float | None = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="target share of calls sent to the strong model, held on live traffic by the controller "
        "(starting from the offline calibration); used for every router without a fixed threshold",
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="fixed thresholds per router (p_strong >= threshold -> strong); these routers skip the controller",
    )
    controller: ControllerConfig = Field(default_factory=ControllerConfig, description="live strong-ratio controller")
    fallback_model: Literal["strong", "weak"] = Field(
        "strong",
        description="side a chat completion goes to when routing itself fails (router down or too slow): "
        "strong favours quality, weak favours cost",
    )
    timeout_s: float = Field(2.0, gt=0, description="routing budget per request before the fallback is used")
    max_in_flight: int = Field(
        32,
        ge=1,
        description="routing calls one ingress replica has outstanding; past this, a request is refused at the "
        "door (/v1/route: 503 with Retry-After; chat: the fallback model) without costing the router or the "
        "backends anything. Size it well inside what they finish within timeout_s: the last admitted request "
        "waits about max_in_flight divided by one retrieval replica's throughput, and a limit they cannot clear "
        "within timeout_s makes the admitted requests time out instead of being answered (see BENCHMARKS.md, "
        "'Serving', and BENCHMARKS.md, 'Figures moved from code comments')",
    )

    @field_validator("thresholds")
    @classmethod
    def _unit_interval(cls, thresholds: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in thresholds.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"thresholds must be in [0, 1], got {bad}")
        return thresholds


class ScoringConfig(_Strict):
    user_turns: int = Field(
        3,
        ge=1,
        description="recent user turns scored together (joined by blank lines): a follow-up such as 'and in "
        "Python?' is only as hard as the conversation it continues",
    )
    max_chars: int = Field(
        4000, ge=1, description="keep only the last max_chars characters of the scored text (bounds embedding cost)"
    )


class CalibrationConfig(_Strict):
    reference: str = Field(
        "training",
        description="reference prompts whose p_strong seeds the controller window and maps strong_ratio to the "
        "starting threshold: 'training', a benchmark name, or a .txt/.jsonl file",
    )
    max_prompts: int = Field(2000, ge=10, description="reference prompts scored (a random sample beyond this)")


# ---------------------------------------------------------------------------------------------- upstreams


class UpstreamConfig(_Strict):
    base_url: str = Field(description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8001/v1")
    model: str = Field(description="model name sent upstream in place of the client's 'model'")
    api_key_env: str | None = Field(
        None, description="environment variable holding the API key (sent as a Bearer token); none: no auth header"
    )
    timeout_s: float = Field(600.0, gt=0, description="whole-request timeout (long generations stream for minutes)")
    connect_timeout_s: float = Field(3.0, gt=0, description="connect timeout: an unreachable upstream fails fast")

    @field_validator("base_url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {url!r}")
        return url.rstrip("/")


class UpstreamsConfig(_Strict):
    strong: UpstreamConfig = Field(description="where calls routed to the strong model go")
    weak: UpstreamConfig = Field(description="where calls routed to the weak model go")
    fallback_on_error: bool = Field(
        True, description="if the chosen upstream cannot be reached, send the call to the other side"
    )


# -------------------------------------------------------------------------------------------- deployments


class AutoscalingConfig(_Strict):
    """The subset of Ray Serve's autoscaling_config turnout sets; Ray validates it again at deploy time."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    target_ongoing_requests: float = Field(
        8.0, gt=0, description="requests in flight per replica that autoscaling aims for"
    )
    upscale_delay_s: float = Field(10.0, ge=0)
    downscale_delay_s: float = Field(300.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        return self


class ActorOptions(_Strict):
    num_cpus: float = Field(
        1.0, ge=0, description="CPUs reserved per replica (Ray scheduling; fractions share a core)"
    )
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica")
    memory: int | None = Field(None, ge=0, description="bytes of memory reserved per replica")


class DeploymentOptions(_Strict):
    num_replicas: int | None = Field(1, ge=1, description="fixed replica count; null when autoscaling")
    autoscaling_config: AutoscalingConfig | None = Field(None, description="replaces num_replicas when set")
    max_ongoing_requests: int = Field(
        64,
        ge=1,
        description="requests a replica works on at once; Ray's default (5) held concurrent clients back to a few "
        "slots and was far slower at 32 clients (see BENCHMARKS.md, 'Figures moved from code comments')",
    )
    max_queued_requests: int = Field(
        -1,
        ge=-1,
        description="requests each caller queues for this deployment beyond its replicas' max_ongoing_requests; "
        "past that Ray rejects at once (HTTP 503, or routing fallback) instead of letting them time out. -1: no limit",
    )
    ray_actor_options: ActorOptions = Field(default_factory=ActorOptions)

    @field_validator("max_queued_requests")
    @classmethod
    def _queue_limit(cls, limit: int) -> int:
        if limit == 0:
            raise ValueError("max_queued_requests must be -1 (no limit) or at least 1")
        return limit

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> DeploymentOptions:
        if self.autoscaling_config is not None and self.num_replicas is not None:
            raise ValueError("set num_replicas or autoscaling_config, not both (num_replicas: null to autoscale)")
        if self.autoscaling_config is None and self.num_replicas is None:
            raise ValueError("num_replicas is null but no autoscaling_config is set")
        return self

    def ray_options(self) -> dict[str, Any]:
        """Keyword arguments for `Deployment.options`."""
        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "ray_actor_options": self.ray_actor_options.model_dump(exclude_none=True),
        }
        if self.autoscaling_config is not None:
            options["autoscaling_config"] = self.autoscaling_config.model_dump(exclude_none=True)
        else:
            options["num_replicas"] = self.num_replicas
        return options


class BatchConfig(_Strict):
    max_batch_size: int = Field(
        32, ge=1, description="most requests embedded together: those that queued while the previous batch ran "
        "(a request that finds the model idle runs at once, so there is no wait to tune)")
    embed_batch_size: int = Field(
        8,
        ge=1,
        description="a batch is sorted by length and embedded in chunks of this size: one forward pass over 32 "
        "random prompts pads all of them to the longest, and length-sorted chunks of 4-8 were much faster on one "
        "core (see BENCHMARKS.md, 'Serving')",
    )


class DeploymentsConfig(_Strict):
    ingress: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(ray_actor_options=ActorOptions(num_cpus=0.25)),
        description="FastAPI ingress: validation, upstream proxying",
    )
    router: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(ray_actor_options=ActorOptions(num_cpus=0.25)),
        description="thresholds, live controller, local routers, decision metrics",
    )
    retrieval: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(ray_actor_options=ActorOptions(num_cpus=0.5)),
        description="embedder + FAISS index: sw_ranking and mf",
    )
    retrieval_batch: BatchConfig = Field(default_factory=BatchConfig, description="micro-batching of the retrieval deployment")
    classifier: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(ray_actor_options=ActorOptions(num_cpus=1.0)),
        description="vLLM classify runner for causal_llm, bound only when causal_llm is enabled. num_cpus is also "
        "its torch thread count (Ray sets OMP_NUM_THREADS from it)",
    )


class ClassifierConfig(_Strict):
    """The causal_llm classifier deployment: the trained checkpoint in vLLM's classify runner (one prefill each)."""

    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="engine dtype (the reference scores for calibration use the same). float32 scores as the "
        "offline router does (within 1e-3); bfloat16 is faster where the hardware has it (GPU, AVX512-BF16/AMX CPU; "
        "see BENCHMARKS.md, 'causal_llm route') and moves p_strong slightly while keeping its ranking (see "
        "BENCHMARKS.md, 'Figures moved from code comments')",
    )
    max_batch_size: int = Field(
        32,
        ge=1,
        le=1024,
        description="most requests scored in one engine call (those that queued while the engine was busy; a "
        "request that finds it idle runs at once) and vLLM's max_num_seqs, so a batch is one engine step",
    )
    kv_cache_gib: int = Field(
        1,
        ge=1,
        description="VLLM_CPU_KVCACHE_SPACE on CPU. A prefill needs max_batch_size x context tokens of KV at once "
        "(32 x 256 tokens of SmolLM2 ~ 0.35 GiB); 1 GiB holds 23k tokens",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="torch threads of the engine (CPU). null: the replica's num_cpus rounded up. A prefill uses all "
        "of them, so on a small machine more threads than reserved CPUs pays while the other replicas idle: on "
        "2 cores, 2 threads beat 1 in throughput and latency at 1 and at 8 callers (see BENCHMARKS.md, 'Figures "
        "moved from code comments')",
    )
    cpu_threads_bind: str = Field(
        "nobind",
        min_length=1,
        description="VLLM_CPU_OMP_THREADS_BIND (CPU only). nobind: the OS places the replica's threads, right where "
        "the cores are shared with the rest of Ray; auto: vLLM pins one thread per core (a dedicated node); or a "
        "core list such as '0-3'",
    )
    reference_prompts: int = Field(
        256,
        ge=10,
        description="reference prompts scored for causal_llm's offline calibration (at most calibration.max_prompts). "
        "`turnout serve` scores them once per checkpoint with a transformers forward pass before Ray starts; "
        "256 are quick to score on a CPU (see BENCHMARKS.md, 'Figures moved from code comments') and place the "
        "starting threshold within a few points of the target ratio, which the live controller then corrects",
    )


# ------------------------------------------------------------------------------------------------ top level


class ArtifactsConfig(_Strict):
    home: str | None = Field(None, description="artifact folder (null: $TURNOUT_HOME, else <repo>/artifacts)")
    data_dir: str | None = Field(None, description="shared data folder (null: $TURNOUT_DATA_DIR, else ../shared/data)")
    embedder: str = Field("minilm", description="minilm (packaged all-MiniLM-L6-v2), hash-<dim> (tests), or a sentence-transformers id/path")
    build_missing: bool = Field(
        True, description="`turnout serve` trains missing router artifacts before starting (replicas never train)"
    )


class TurnoutConfig(_Strict):
    """`args` of the turnout application: everything `build_app` needs."""

    routers: RoutersConfig = Field(default_factory=RoutersConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig, description="what text of a conversation is scored")
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    upstreams: UpstreamsConfig = Field(description="OpenAI-compatible endpoints behind /v1/chat/completions")
    deployments: DeploymentsConfig = Field(default_factory=DeploymentsConfig)
    classifier: ClassifierConfig = Field(
        default_factory=ClassifierConfig, description="the causal_llm classifier deployment (used when causal_llm is enabled)"
    )
    artifacts: ArtifactsConfig = Field(default_factory=ArtifactsConfig)

    @model_validator(mode="after")
    def _every_router_has_a_threshold(self) -> TurnoutConfig:
        stray = sorted(set(self.routing.thresholds) - set(self.routers.enabled))
        if stray:
            raise ValueError(f"routing.thresholds names routers that are not enabled: {stray}")
        if self.routing.strong_ratio is None:
            missing = [r for r in self.routers.enabled if r not in self.routing.thresholds]
            if missing:
                raise ValueError(f"routing.strong_ratio is null, so routing.thresholds must cover {missing}")
        return self

    @property
    def retrieval_routers(self) -> list[str]:
        return [r for r in self.routers.enabled if r in RETRIEVAL_ROUTERS]

    @property
    def local_routers(self) -> list[str]:
        return [r for r in self.routers.enabled if r in LOCAL_ROUTERS]

    @property
    def classifier_routers(self) -> list[str]:
        return [r for r in self.routers.enabled if r in CLASSIFIER_ROUTERS]


DEFAULT_CONFIG_YAML = """\
# turnout: Ray Serve config file (`serve run FILE`, `serve deploy FILE`, KubeRay serveConfigV2, `turnout serve --config FILE`).
proxy_location: HeadOnly
http_options:
  host: 127.0.0.1
  port: 8000
applications:
  - name: turnout
    route_prefix: /
    import_path: serve.app:build_app
    logging_config: {enable_access_log: false}
    args:
      routers:
        enabled: [sw_ranking, mf, length, random]   # + causal_llm after `turnout train causal_llm`: deploy/causal.yaml
        default: sw_ranking   # chosen on the dev benchmarks and the obvious-prompts check (BENCHMARKS.md)
        strong_model: gpt-4-1106-preview
        weak_model: mistralai/Mixtral-8x7B-Instruct-v0.1
      routing:
        strong_ratio: 0.5          # held live; or fix per-router thresholds: {mf: 0.5}
        thresholds: {}
        controller: {window: 2000, min_live: 100}
        fallback_model: strong
        timeout_s: 2.0
        max_in_flight: 32          # per ingress replica; beyond it: immediate 503 / fallback
      scoring:
        user_turns: 3
        max_chars: 4000
      calibration:
        reference: training
        max_prompts: 2000
      upstreams:
        strong: {base_url: "http://127.0.0.1:8001/v1", model: strong, api_key_env: TURNOUT_STRONG_API_KEY}
        weak: {base_url: "http://127.0.0.1:8002/v1", model: weak, api_key_env: TURNOUT_WEAK_API_KEY}
        fallback_on_error: true
      deployments:
        ingress:
          num_replicas: 1
          max_ongoing_requests: 128
          ray_actor_options: {num_cpus: 0.25}
        router:
          num_replicas: 1
          max_ongoing_requests: 128
          ray_actor_options: {num_cpus: 0.25}
        retrieval:
          num_replicas: 1
          # 64 in flight (ongoing + queued) is what one replica clears well inside routing.timeout_s (BENCHMARKS.md,
          # 'Serving'); a burst beyond that gets an immediate 503 / fallback instead of queueing into a timeout
          max_ongoing_requests: 32
          max_queued_requests: 32
          ray_actor_options: {num_cpus: 0.5}
          # autoscaling instead: num_replicas: null, autoscaling_config: {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 16}
        retrieval_batch: {max_batch_size: 32, embed_batch_size: 8}
      artifacts:
        home: null
        data_dir: null
        embedder: minilm
        build_missing: true
"""


# ------------------------------------------------------------------------------------------------ loading


def _one_line(exc: ValidationError, where: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}.{loc}: {err['msg']}" if loc else f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_app_args(args: Any, where: str = "args") -> TurnoutConfig:
    """Validate one application's `args` into a TurnoutConfig; ConfigError with every problem on one line."""
    if isinstance(args, TurnoutConfig):
        return args
    try:
        return TurnoutConfig.model_validate(args)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, where)) from exc


class ServeFile:
    """A validated Ray Serve config file: the raw document plus the parsed args of the turnout application."""

    def __init__(self, document: dict[str, Any], app_index: int, config: TurnoutConfig):
        self.document = document
        self.app_index = app_index
        self.config = config

    @property
    def app(self) -> dict[str, Any]:
        return self.document["applications"][self.app_index]

    @property
    def host(self) -> str:
        return (self.document.get("http_options") or {}).get("host", "127.0.0.1")

    @property
    def port(self) -> int:
        return int((self.document.get("http_options") or {}).get("port", 8000))

    @property
    def route_prefix(self) -> str:
        return self.app.get("route_prefix") or "/"


def load_serve_file(text: str | None = None, path: str | Path | None = None) -> ServeFile:
    """Parse and validate a serve config (the embedded default when neither text nor path is given).

    Ray's part is checked with Ray's own schema when Ray is installed; the turnout application's args with
    TurnoutConfig. Exactly one application must use `serve.app:build_app`.
    """
    import yaml

    source = "default config"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        text, source = path.read_text(), str(path)
    elif text is None:
        text = DEFAULT_CONFIG_YAML
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("applications"), list):
        raise ConfigError(f"{source}: expected a Ray Serve config with an 'applications' list")
    _check_ray_schema(document, source)
    ours = [i for i, app in enumerate(document["applications"]) if isinstance(app, dict) and app.get("import_path") == APP_IMPORT_PATH]
    if len(ours) != 1:
        raise ConfigError(f"{source}: expected exactly one application with import_path {APP_IMPORT_PATH}, found {len(ours)}")
    index = ours[0]
    config = parse_app_args(document["applications"][index].get("args") or {}, f"{source}: applications[{index}].args")
    return ServeFile(document, index, config)


def _check_ray_schema(document: dict[str, Any], source: str) -> None:
    try:
        from ray.serve.schema import ServeDeploySchema
    except ImportError:  # validating our args does not need Ray; starting does, and says so there
        log.debug("ray[serve] not installed: skipping Ray's schema check of %s", source)
        return
    try:
        ServeDeploySchema.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, source)) from exc
