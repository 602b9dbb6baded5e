"""`edgecxr models`: list the models a name can refer to; `edgecxr models add` registers a bundle."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgecxr.runtime.fetch import DEFAULT_DEADLINE_S, MAX_BYTES


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
        metrics = "test: not measured (edgecxr evaluate --split test, or verify)"
        if test.get("accuracy") is not None:
            covid = test.get("covid_sensitivity")
            metrics = f"test accuracy {test['accuracy']:.1%} (n={test.get('n')})" + (
                f", COVID sensitivity {covid:.1%}" if covid is not None else "") + (
                f"; by {test['by']}" if test.get("by") else "")
        shape = "x".join(str(v) for v in r.get("input_shape") or [])
        lines.append(f"{r['name']}  ({r['source']}, {r['model']})  input {shape}  precisions {', '.join(r['precisions']) or '-'}")
        lines.append(f"    classes: {', '.join(r['classes'])}")
        lines.append(f"    {metrics}")
        for key, a in r["artifacts"].items():
            sha = (a.get("sha256") or "not recorded")[:16]
            g = a.get("gate_on_test") or {}
            gate = "" if not g else f"  test {g['accuracy']:.1%} ({'passed' if g.get('passed') else 'failed'} the gate)"
            lines.append(f"    {key:<10} {a['file']:<20} {_size(a['bytes']):>9}  sha256 {sha}{gate}")
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
@click.option("--replace", is_flag=True, help="Replace a registered model of the same name (atomically).")
@click.option("--deadline", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help=f"For a URL: seconds the whole download may take [default: {DEFAULT_DEADLINE_S:g}].")
@click.option("--max-mb", "max_bytes", type=click.FloatRange(min=0, min_open=True), default=None, metavar="MIB",
              help=f"For a URL: largest archive accepted, in MiB (its files may unpack to twice that) "
                   f"[default: {MAX_BYTES // 1024**2}].")
def add(bundle: str, name: str, sha256: str | None, replace: bool, deadline: float | None,
        max_bytes: float | None) -> None:
    """Register BUNDLE under NAME: the files its bundle.json lists (ONNX models, the confidence fit)
    are copied into the models folder with bundle.json. BUNDLE is a bundle folder, or an http(s) URL
    of a zip holding one (downloaded once into ~/.cache/edgecxr, checked against --sha256, within
    --deadline and --max-mb).

    Each listed file must match the sha256 bundle.json records for it, or nothing is registered
    (exit 1). The copy is built aside and renamed into place, so a failure (a full disk included)
    or a second `models add` at the same time never leaves a partial model.

    \b
    Examples:
      edgecxr models add runs/my-coronet --name my-coronet
      edgecxr models add https://models.example.org/site-coronet.zip --sha256 9f2c... --name site-coronet
    """
    import shutil

    from edgecxr.runtime import fetch, store

    def warn(msg: str) -> None:
        click.echo(msg, err=True)

    if bundle.startswith(("http://", "https://")):
        if not sha256:
            raise click.UsageError("a URL needs --sha256 (the archive is checked against it)")
        tmp, folder = fetch.fetch_bundle(
            bundle, sha256,
            deadline=DEFAULT_DEADLINE_S if deadline is None else deadline,
            max_bytes=MAX_BYTES if max_bytes is None else int(max_bytes * 1024**2))
        try:
            entry = store.add(folder, name, replace=replace, warn=warn)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        if sha256 or deadline is not None or max_bytes is not None:
            raise click.UsageError("--sha256, --deadline and --max-mb are for URLs; a local bundle's files are "
                                   "checked against the sha256 its bundle.json records")
        if not Path(bundle).is_dir():
            raise click.BadParameter(f"{bundle}: not a folder or an http(s) URL", param_hint="BUNDLE")
        entry = store.add(bundle, name, replace=replace, warn=warn)
    click.echo(str(entry.path))
