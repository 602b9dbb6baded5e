"""listen and watch: the DICOM node's two doors (a Storage SCP, a watch folder); the work is in edgecxr.dicom."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from edgecxr.cli.options import FIX_ORIENTATION_HELP, input_rules, model_option
from edgecxr.cli.output import _err, printable
from edgecxr.runtime.select import BACKENDS


def _model_options(f: Any) -> Any:
    for opt in reversed([
        model_option(),
        click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True),
        click.option("--batch-size", type=click.IntRange(1, 256), default=8, show_default=True,
                     help="Inputs classified together when several are waiting."),
        click.option("--forward", metavar="AE@HOST:PORT",
                     help="Also send each SR by C-STORE to this DICOM node (the PACS), e.g. PACS@10.0.0.5:104."),
        click.option("--no-input-checks", is_flag=True, help="Send every decodable input to the model (docs/ARCHITECTURE.md)."),
        click.option("--fix-orientation", is_flag=True, help=FIX_ORIENTATION_HELP),
        click.option("--json", "as_json", is_flag=True, help="On exit, print the counts as JSON on stdout."),
    ]):
        f = opt(f)
    return f


def _destination(text: str | None, calling: str) -> Any:
    if text is None:
        return None
    from edgecxr.dicom.process import Destination

    try:
        return Destination.parse(text, calling)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--forward") from None


def _load(model: str | None, backend: str, rules: Any) -> Any:
    from edgecxr.runtime.classifier import Classifier

    clf = Classifier.load(model, backend=backend, input_rules=rules)
    _err(f"using {clf.describe()}")
    if "warning" in clf.backend_info:
        _err(f"warning: {clf.backend_info['warning']}")
    return clf


def _separate(a: Path, b: Path, a_name: str, b_name: str) -> None:
    """Refuse an output folder that is, or lies inside, the folder the node reads from."""
    pa, pb = Path(os.path.abspath(a)), Path(os.path.abspath(b))
    if pa == pb or pb in pa.parents:
        raise click.BadParameter(f"{printable(a)} is inside {b_name} {printable(b)}; give a folder of its own",
                                 param_hint=a_name)


def _log(line: str) -> None:
    click.echo(line, err=True)
    sys.stderr.flush()


@click.command()
@click.option("--spool", "spool_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Where received instances are kept (received/) and marked done (done/).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the Structured Reports (SOPInstanceUID.sr.dcm).")
@click.option("--ae-title", default="EDGECXR", show_default=True, help="This node's AE title.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; open it on purpose).")
@click.option("--port", type=click.IntRange(0, 65535), default=11112, show_default=True, help="0: any free port.")
@click.option("--allow", "allowed", multiple=True, metavar="AE",
              help="Accept associations only from this calling AE title (repeat for several)  [default: any]")
@_model_options
def listen(spool_dir: Path, out_dir: Path, ae_title: str, host: str, port: int, allowed: tuple[str, ...],
           model: str | None, backend: str, batch_size: int, forward: str | None, no_input_checks: bool,
           fix_orientation: bool, as_json: bool) -> None:
    """DICOM Storage SCP: receive CR/DX images, classify them, answer with a Structured Report.

    Every instance is written to the spool (fsync, atomic rename, named by its SOP Instance UID)
    before C-STORE Success is answered, so nothing acknowledged is lost; a worker classifies from
    the spool and writes the SR into --out (and sends it to --forward). After a crash or restart
    the instances received but not yet classified are processed first; an instance sent again is
    acknowledged but never processed twice. A malformed data set is refused (0xC210); one whose
    pixels cannot be decoded gets an SR saying why. One line per event on stderr; the ready line
    is 'listening: AE on HOST:PORT'. SIGINT/SIGTERM stop it gracefully (exit 0). See docs/DICOM.md.

    \b
    Examples:
      edgecxr listen --spool /var/lib/edgecxr/spool --out /var/lib/edgecxr/reports
      edgecxr listen --spool spool --out reports --port 11112 --allow SCANNER1 --forward PACS@10.0.0.5:104
    """
    from edgecxr.dicom import require
    from edgecxr.dicom.node import StorageNode

    require("pynetdicom", "edgecxr listen")  # before the model loads
    require("highdicom", "edgecxr listen")
    _separate(out_dir, spool_dir, "--out", "--spool")
    dest = _destination(forward, ae_title)
    with _load(model, backend, input_rules(no_input_checks, fix_orientation)) as clf:
        try:
            node = StorageNode(clf, spool_dir, out_dir, ae_title=ae_title, host=host, port=port, allowed=allowed,
                               forward=dest, batch_size=batch_size, log=_log)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--ae-title") from None
        bound = node.start()
        _log(f"listening: {ae_title} on {bound[0]}:{bound[1]}; spool {printable(spool_dir)}, reports {printable(out_dir)}"
             + (f", allowed {', '.join(allowed)}" if allowed else "") + (f", forwarding to {forward}" if forward else ""))
        node.serve_forever()
        stats = {**node.stats, **node.spool.counts()}
    _log(f"stopped: {json.dumps(stats)}" + (f"; {stats['pending']} pending instance(s) are classified at the next start"
                                            if stats["pending"] else ""))
    if as_json:
        click.echo(json.dumps(stats, indent=2))


@click.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the results: SOPInstanceUID.sr.dcm for DICOM files, KEY.json for every file.")
@click.option("--interval", type=click.FloatRange(0.05), default=1.0, show_default=True, help="Seconds between scans.")
@click.option("--settle", type=click.FloatRange(0), default=2.0, show_default=True,
              help="Seconds a file's size and mtime must stay unchanged before it is read.")
@click.option("--once", is_flag=True, help="Process what is there (once it settles), then exit.")
@_model_options
def watch(folder: Path, out_dir: Path, interval: float, settle: float, once: bool, model: str | None, backend: str,
          batch_size: int, forward: str | None, no_input_checks: bool, fix_orientation: bool, as_json: bool) -> None:
    """Watch a folder a workstation drops X-rays into (DICOM, PNG, JPEG); classify each file exactly once.

    FOLDER must exist. A file is read once its size stopped changing for --settle seconds,
    classified, its results written to --out (an SR for DICOM files, a JSON result for every
    file), then moved to FOLDER/processed/ (FOLDER/failed/ when it could not be read: an empty or
    unreadable file too). Files are keyed by SOP Instance UID (DICOM) or content sha256 (others):
    a file seen before, even under another name or after a restart, is moved on without being
    processed again. A file that killed the process 3 times goes to FOLDER/quarantine/ with a
    reason file. SIGINT/SIGTERM stop it after the batch in hand (exit 0). See docs/DICOM.md.

    \b
    Examples:
      edgecxr watch /data/dropbox --out /data/reports
      edgecxr watch dropbox --out reports --once --json
    """
    import signal

    from edgecxr.dicom import require
    from edgecxr.dicom.watch import WatchFolder

    require("highdicom", "edgecxr watch")
    if not folder.exists():  # never created: a typo must not become an empty folder watched forever
        raise click.BadParameter(f"{printable(folder)} does not exist", param_hint="FOLDER")
    if not folder.is_dir():
        raise click.BadParameter(f"{printable(folder)} is not a folder", param_hint="FOLDER")
    if Path(os.path.abspath(out_dir)) == Path(os.path.abspath(folder)):
        raise click.BadParameter("the results cannot go into the watched folder itself", param_hint="--out")
    dest = _destination(forward, "EDGECXR")
    with _load(model, backend, input_rules(no_input_checks, fix_orientation)) as clf:
        watcher = WatchFolder(clf, folder, out_dir, interval_s=interval, settle_s=settle, batch_size=batch_size,
                              forward=dest, log=_log)
        previous = {sig: signal.signal(sig, lambda *_: watcher.stop()) for sig in (signal.SIGINT, signal.SIGTERM)}
        _log(f"watching: {printable(folder)}; results {printable(out_dir)}")
        try:
            watcher.run(once=once)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    _log(f"stopped: {json.dumps(watcher.stats)}")
    if as_json:
        click.echo(json.dumps(watcher.stats, indent=2))
