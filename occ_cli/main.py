"""The `occ` typer application.

Subcommand modules import only typer and rich at module level; they import ``occ_core`` (numpy,
torch, ...) inside the command body, so ``occ --help`` stays fast and never imports torch.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from occ_cli.console import plain_flags
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
