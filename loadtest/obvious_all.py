"""Every obvious-prompt file, every router, and earlier artifacts beside the current ones (issue 22's round reports).

    python -m loadtest.obvious_all --router sw_ranking,mf,bert,causal_llm \
        --before bert=/path/to/old/routers --before causal_llm=/path/to/old/routers \
        --option "sw_ranking (difficulty_k 0)=sw_ranking:difficulty_k=0" --out benchmarks/issue22_round3/obvious_all.json

AUC (whole and length-balanced, 95 % bootstrap intervals) of each router on the committed file and on every later
one (models/obvious.py), for the default pair (or `--strong`/`--weak`). `--before NAME=ROOT` adds NAME loaded from
another routers folder (the artifact it replaced), `--option LABEL=NAME:KEY=VALUE` NAME loaded with one option changed, `--home-router
LABEL=NAME:HOME:EMBEDDER` NAME from another home with its own embedder (an embedder backend's build). It reads the
newest file too, which is held out until its first read: run it at the end of a piece of work, as `turnout eval
--obvious-heldout` does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from models import pipeline
    from models.obvious import OBVIOUS_LATER_PATHS, OBVIOUS_PATH, obvious_report
    from models.random_router import RandomRouter
    from models.registry import entry

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--router", required=True, help="comma list of routers in <home>/routers")
    parser.add_argument("--before", action="append", default=[], help="NAME=ROUTERS_FOLDER (repeatable)")
    parser.add_argument("--option", action="append", default=[], help="LABEL=NAME:KEY=VALUE (repeatable)")
    parser.add_argument("--home-router", action="append", default=[], help="LABEL=NAME:HOME:EMBEDDER (repeatable)")
    parser.add_argument("--home")
    parser.add_argument("--embedder", help="the home's embedder (default: the served one)")
    parser.add_argument("--strong", help="with --weak: the pair to score (default: the served pair)")
    parser.add_argument("--weak")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    ws = pipeline.workspace(args.home, **({"embedder": args.embedder} if args.embedder else {}))

    pair = {"strong": args.strong, "weak": args.weak} if args.strong else {}

    def load(name: str, root: Path, embedder=ws.embedder, **options):
        return entry(name).router_class().from_artifacts(root, embedder=embedder, **pair, **options)

    routers = {name: load(name, ws.routers) for name in args.router.split(",")}
    for item in args.before:
        name, _, root = item.partition("=")
        routers[f"{name} (before)"] = load(name, Path(root))
    for item in args.option:
        label, _, spec = item.partition("=")
        name, _, setting = spec.partition(":")
        key, _, value = setting.partition("=")
        routers[label] = load(name, ws.routers, **{key: json.loads(value)})
    for item in args.home_router:
        label, _, spec = item.partition("=")
        name, home, embedder = spec.split(":")
        other = pipeline.workspace(home, embedder=embedder)
        routers[label] = load(name, other.routers, other.embedder)
    routers["random"] = RandomRouter(0)
    report = {}
    for path in (OBVIOUS_PATH, *OBVIOUS_LATER_PATHS):
        entries = obvious_report(routers, path, n_bootstrap=1000)
        report[path.name] = {name: {key: e[key] for key in ("auc", "auc_ci95", "auc_balanced", "auc_balanced_ci95",
                                                              "n", "n_balanced")} for name, e in entries.items()}
        print(path.name, json.dumps({name: [round(e["auc"], 3), round(e["auc_balanced"], 3)] for name, e in entries.items()}),
              flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
