"""`edgecxr models`: list the models a name can refer to; `edgecxr models add` registers a bundle."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def format_models(rows: list[dict]) -> str:
    if not rows:
        return "no models found"
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"{r['name']}  ({r['source']})  error: {r['error']}")
            continue
        test = r.get("test") or {}
        metrics = "test: not measured"
        if test.get("accuracy") is not None:
            covid = test.get("covid_sensitivity")
            metrics = f"test accuracy {test['accuracy']:.1%} (n={test.get('n')})" + (
                f", COVID sensitivity {covid:.1%}" if covid is not None else "")
        shape = "x".join(str(v) for v in r.get("input_shape") or [])
        lines.append(f"{r['name']}  ({r['source']}, {r['model']})  input {shape}  precisions {', '.join(r['precisions']) or '-'}")
        lines.append(f"    classes: {', '.join(r['classes'])}")
        lines.append(f"    {metrics}")
        for key, a in r["artifacts"].items():
            sha = (a.get("sha256") or "not recorded")[:16]
            lines.append(f"    {key:<10} {a['file']:<20} {_size(a['bytes']):>9}  sha256 {sha}")
        lines.append(f"    location: {r['location']}")
    return "\n".join(lines)


@click.group("models", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """List the models you can name in `--model` / `Classifier.load(NAME)`: the shipped reference
    models and bundles registered with `edgecxr models add` (folder: $EDGECXR_MODELS, else
    ~/.local/share/edgecxr/models). The first listed default is coronet.

    \b
    Examples:
      edgecxr models
      edgecxr models --json
      edgecxr models add runs/my-coronet --name my-coronet
    """
    if ctx.invoked_subcommand is not None:
        return
    from edgecxr import registry

    rows = [registry.describe(e) for e in registry.available().values()]
    click.echo(json.dumps({"default": registry.DEFAULT_MODEL, "models": rows}, indent=2) if as_json
               else format_models(rows))


@models.command("add")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Name to use with --model (a-z, 0-9, '.', '_', '-').")
@click.option("--replace", is_flag=True, help="Replace a registered model of the same name.")
def add(bundle: Path, name: str, replace: bool) -> None:
    """Copy BUNDLE's ONNX models and bundle.json into the models folder under NAME (sha256 recorded)."""
    from edgecxr import registry

    entry = registry.add(bundle, name, replace=replace)
    click.echo(str(entry.path))
