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
    ~/.local/share/edgecxr/models). Without --model, commands use coronet.

    \b
    Examples:
      edgecxr models
      edgecxr models --json
      edgecxr models add runs/my-coronet --name my-coronet
    """
    if ctx.invoked_subcommand is not None:
        return
    from edgecxr.runtime import store

    rows = [store.describe(e) for e in store.available().values()]
    click.echo(json.dumps({"default": store.DEFAULT_MODEL, "models": rows}, indent=2) if as_json
               else format_models(rows))


@models.command("add")
@click.argument("bundle")
@click.option("--name", required=True, help="Name to use with --model (a-z, 0-9, '.', '_', '-').")
@click.option("--sha256", help="For a URL: the archive's sha256 (required; the download is checked against it).")
@click.option("--replace", is_flag=True, help="Replace a registered model of the same name.")
def add(bundle: str, name: str, sha256: str | None, replace: bool) -> None:
    """Register BUNDLE under NAME: its ONNX models and bundle.json are copied into the models folder
    with their sha256. BUNDLE is a bundle folder, or an http(s) URL of a zip holding one (downloaded
    once into ~/.cache/edgecxr, checked against --sha256).

    \b
    Examples:
      edgecxr models add runs/my-coronet --name my-coronet
      edgecxr models add https://models.example.org/site-coronet.zip --sha256 9f2c... --name site-coronet
    """
    import shutil

    from edgecxr.runtime import fetch, store

    if bundle.startswith(("http://", "https://")):
        if not sha256:
            raise click.UsageError("a URL needs --sha256 (the archive is checked against it)")
        tmp, folder = fetch.fetch_bundle(bundle, sha256)
        try:
            entry = store.add(folder, name, replace=replace)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        if sha256:
            raise click.UsageError("--sha256 is for URLs; a local bundle's files are hashed when registered")
        if not Path(bundle).is_dir():
            raise click.BadParameter(f"{bundle}: not a folder or an http(s) URL", param_hint="BUNDLE")
        entry = store.add(bundle, name, replace=replace)
    click.echo(str(entry.path))
