"""`edgecxr` command line: a lazy Click group.

Each subcommand lives in a module of this package and is imported only when it runs, so
`edgecxr --help` and `edgecxr infer` never import TensorFlow (Click's LazyGroup pattern). Library
errors (`EdgeCXRError`) become one-line messages with the error's exit code, never a traceback.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from edgecxr.core.errors import EdgeCXRError
from edgecxr.core.version import __version__

#: command name -> "module:attribute" (module relative to edgecxr.cli), with a one-line help.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("data:data", "Check a dataset manifest or prepare one from the public source layouts."),
    "train": ("train:train", "Train CoroNet or the CNN-LSTM on a manifest; writes a model bundle."),
    "evaluate": ("evaluate:evaluate", "Evaluate a bundle's Keras model on a split (metrics, CIs, confusion matrix)."),
    "export": ("export:export", "Export a bundle to ONNX (FP32 and FP16) with a parity check against Keras."),
    "calibrate": ("calibrate:calibrate", "Calibrate an INT8 Q/DQ ONNX model on the held-out calib split."),
    "qat": ("qat:qat", "Quantization-aware fine-tuning for INT8, chosen on val, published through the gate."),
    "confidence": ("confidence:confidence", "Fit calibrated probabilities (temperature) and OOD abstention on train/val."),
    "verify": ("verify:verify", "Accuracy regression gate: every artifact vs the FP32 reference on held-out images."),
    "build": ("build:build", "Build a TensorRT engine (FP16 or INT8) for this GPU, with a metadata sidecar."),
    "infer": ("infer:infer", "Classify X-ray images (PNG/JPEG/DICOM files, folders, globs)."),
    "bench": ("bench:bench", "Benchmark latency and throughput of a model on the available backends."),
    "info": ("info:info", "Show installed backends, GPU and TensorRT versions."),
    "listen": ("listen:listen", "DICOM Storage SCP: receive CR/DX, classify, answer with a Structured Report."),
    "watch": ("listen:watch", "Watch a folder for X-rays (DICOM/PNG/JPEG); classify each file exactly once."),
    "models": ("models:models", "List the shipped reference models and registered bundles; register one."),
    "serve": ("serve:serve", "Serve models over HTTP (KServe v2 Open Inference Protocol, /v1/classify, /metrics)."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target[0].split(":")
        module = importlib.import_module(f"{__name__}.{module_name}")
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text from the table above, so `--help` imports no subcommand module.
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Errors in the top-level options (`edgecxr --bogus`) get the same one `error:` line as the rest."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
            # non-standalone Click returns an Exit's code instead of exiting (commands return None)
            sys.exit(rv if isinstance(rv, int) else 0)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            if isinstance(exc, _NO_ARGS_IS_HELP):
                click.echo(exc.ctx.get_help() if exc.ctx is not None else str(exc))
                sys.exit(0 if exc.ctx is None else 2)
            hint = f"; see '{exc.ctx.command_path} --help'" if exc.ctx is not None else ""
            click.echo(f"error: {exc.format_message().rstrip('.')}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("\nerror: interrupted", err=True)
            sys.exit(INTERRUPTED_EXIT_CODE)

    def invoke(self, ctx: click.Context):  # noqa: D401 - click override
        try:
            return super().invoke(ctx)
        except EdgeCXRError as exc:
            click.echo(f"error: {exc}{option_hint(self, ctx, exc.params)}", err=True)
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:
            if isinstance(exc, _NO_ARGS_IS_HELP):
                raise  # `edgecxr data` alone: Click prints the group's help
            # One `error:` line like every other failure (Click's default is three lines), exit 2.
            where = f"; see '{exc.ctx.command_path} --help'" if exc.ctx is not None else ""
            click.echo(f"error: {exc.format_message().rstrip('.')}{where}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            # Ctrl-C: one line and the shell's convention (128 + SIGINT), so a calling script can
            # tell "interrupted" from "a file was bad" (1); atomic writes leave no half file behind.
            click.echo("\nerror: interrupted", err=True)
            ctx.exit(INTERRUPTED_EXIT_CODE)
        except OSError as exc:
            # Environment problems the library did not anticipate (disk full, permissions, a
            # folder where a file should be): the OS message names the path; no traceback.
            if isinstance(exc, BrokenPipeError):
                raise  # `edgecxr infer ... | head`: Click handles a closed stdout quietly
            click.echo(f"error: {os_error_message(exc)}", err=True)
            ctx.exit(1)


#: Click >= 8.2 raises this (a UsageError) to show a group's help when no subcommand is given
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())

#: exit code after Ctrl-C (SIGINT), as shells report it
INTERRUPTED_EXIT_CODE = 130


def _params_of(command: click.Command | None) -> list[click.Parameter]:
    """A command's parameters, and for a group those of its subcommands (`data prepare`, `models add`)."""
    if command is None:
        return []
    params = list(command.params)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            params += _params_of(sub)
    return params


def _option_label(param: click.Parameter) -> str:
    if not isinstance(param, click.Option):
        return (param.name or "").upper()  # a positional argument, e.g. MANIFEST
    names = [o for o in param.opts if o.startswith("--")] or param.opts
    return "/".join([names[0], *param.secondary_opts])


def option_hint(group: click.Group, ctx: click.Context, params: tuple[str, ...]) -> str:
    """' (options: --parity-split, --data)': the command's options for the library arguments an error names.

    Library errors name the thing that is wrong (`EdgeCXRError.params`: the library call's argument
    names); the CLI's options carry the same names as the arguments they set, so the flags come
    from the command itself and the library never spells one.
    """
    if not params or ctx.invoked_subcommand is None:
        return ""
    by_name: dict[str, str] = {}
    for param in _params_of(group.get_command(ctx, ctx.invoked_subcommand)):
        if param.name and not getattr(param, "hidden", False):
            by_name.setdefault(param.name, _option_label(param))
    labels = list(dict.fromkeys(by_name[p] for p in params if p in by_name))
    return f" (options: {', '.join(labels)})" if labels else ""


def os_error_message(exc: OSError) -> str:
    """'PATH: reason' for an OSError (without the '[Errno N]' prefix), else its text."""
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="edgecxr")
def main() -> None:
    """edgecxr: chest X-ray classifiers from training to verified engines beside the scanner.

    \b
    Pipeline:  data check -> train -> evaluate -> export -> calibrate [-> qat] -> confidence -> verify -> build
               -> infer / bench
    Example:   edgecxr infer image.png            (the shipped reference CoroNet)
    """


def run() -> None:  # pragma: no cover - console entry point helper
    sys.exit(main())
