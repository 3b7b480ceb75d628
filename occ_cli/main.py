"""The `occ` typer application.

Subcommand modules import only typer and rich at module level; they import ``occ_core`` (numpy,
torch, ...) inside the command body, so ``occ --help`` stays fast and never imports torch.
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from occ_cli.console import fail, plain_flags, usage_error_line
from occ_core import __version__

plain_flags()

COMMAND_ORDER = ("prepare", "vp-estimate", "pretrain-binary", "train", "render", "eval", "export", "predict",
                 "quickstart")
"""The order of 'occ --help': the pipeline's order, quickstart (all of it) last."""


class _OrderedGroup(TyperGroup):
    """Lists subcommands in COMMAND_ORDER (typer lists plain commands before groups such as 'prepare')."""

    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        rank = {n: i for i, n in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda n: rank.get(n, len(rank)))

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra):
        """typer's main, with every command-line usage error of every subcommand (unknown option, missing
        option or value, a value of the wrong type) as ONE line ``error: occ train: ...`` and exit 2,
        instead of the usage text and a rich error box. --help, --version and ``no_args_is_help`` are
        untouched; ``standalone_mode=False`` (embedding) gets typer's own behaviour."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _click_exceptions.ClickException as e:
            if isinstance(e, _click_exceptions.NoArgsIsHelpError):  # `occ`, `occ prepare`: the help, exit 2
                if e.format_message().strip():  # non-rich typer: the help is the message
                    e.show()
                sys.exit(e.exit_code)
            if isinstance(e, _click_exceptions.UsageError):
                fail(usage_error_line(e, self._command_path(prog_name, args)), e.exit_code)
            fail(" ".join(str(e.format_message()).split()), e.exit_code)
        except typer.Abort:  # EOF at a prompt
            fail("aborted", 1)
        # typer returns the exit status of typer.Exit / --help / --version (an int), else the command's value
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)

    def _command_path(self, prog_name, args) -> str:
        """'occ prepare kitti' from the leading subcommand names of ``args`` (for errors without a context)."""
        words, cmd = [prog_name or self.name or "occ"], self
        for token in (sys.argv[1:] if args is None else list(args)):
            sub = (getattr(cmd, "commands", None) or {}).get(token)
            if sub is None:
                break
            words.append(token)
            cmd = sub
        return " ".join(words)


from typer._click import exceptions as _click_exceptions  # typer (>= 0.29, pyproject.toml) vendors click


app = typer.Typer(
    cls=_OrderedGroup,
    name="occ",
    help="3D semantic occupancy prediction toolkit: prepare datasets, estimate vanishing points, train, predict, evaluate, render, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"occ {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """3D semantic occupancy prediction toolkit."""


def _register() -> None:
    from occ_cli.commands import eval as eval_cmd
    from occ_cli.commands import export as export_cmd
    from occ_cli.commands import predict as predict_cmd
    from occ_cli.commands import pretrain_binary as pretrain_binary_cmd
    from occ_cli.commands import prepare as prepare_cmd
    from occ_cli.commands import quickstart as quickstart_cmd
    from occ_cli.commands import render as render_cmd
    from occ_cli.commands import train as train_cmd
    from occ_cli.commands import vp_estimate as vp_estimate_cmd

    app.add_typer(prepare_cmd.app, name="prepare")
    app.command("vp-estimate")(vp_estimate_cmd.vp_estimate_command)
    app.command("pretrain-binary")(pretrain_binary_cmd.pretrain_binary_command)
    app.command("train")(train_cmd.train_command)
    app.command("render")(render_cmd.render_command)
    app.command("eval")(eval_cmd.eval_command)
    app.command("export")(export_cmd.export_command)
    app.command("predict")(predict_cmd.predict_command)
    app.command("quickstart")(quickstart_cmd.quickstart_command)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
