"""Writes prometheusrule.yaml, the Prometheus operator's wrapper around rules.yml, from rules.yml itself.

rules.yml is the one place the rules are written (promtool reads it); the operator wants the same groups under
a PrometheusRule's `spec`. `python deploy/prometheus/prometheusrule.py` rewrites the file; the tests compare
the committed copy with a fresh rendering, so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE / "rules.yml"
OUT = HERE / "prometheusrule.yaml"
HEADER = "# Generated from rules.yml by prometheusrule.py: edit rules.yml and rerun, never this file.\n"


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (PromQL, descriptions), so the wrapper stays readable in review."""


def _str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(rules_path: Path = RULES) -> str:
    groups = yaml.safe_load(rules_path.read_text())["groups"]
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "turnout", "labels": {"app.kubernetes.io/name": "turnout",
                                                   "app.kubernetes.io/component": "monitoring"}},
        "spec": {"groups": groups},
    }
    # A wide line limit: PyYAML would otherwise fold long PromQL lines at arbitrary spaces.
    return HEADER + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the PrometheusRule")
    args = parser.parse_args(argv)
    args.out.write_text(render())


if __name__ == "__main__":
    main()
