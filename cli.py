"""The `kerasllm` command line: one Typer app wired from the command modules in `kerasllm.commands`.

Each command lives in the room of its wing (`models`, `training`, `using`, `exporting`, `serving`); this file only
names them, in the order `kerasllm --help` lists them. TensorFlow is imported only by commands that need it, so
`kerasllm --help` and `kerasllm list` answer at once.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from kerasllm import __version__, distribute
from kerasllm.commands import exporting, models, serving, training, using
from kerasllm.commands.common import BackendOption, errors
from kerasllm.core import compat, quiet

compat.hide_flag_types()
compat.one_line_usage_errors(lambda line: errors.print(f"[bold red]error:[/] {escape(line)}", highlight=False))

app = typer.Typer(
    help="kerasllm: a Keras 3 model zoo. Train, evaluate, generate with and export language and vision models.\n\n"
    "Start with `kerasllm list`, then `kerasllm train lstm-textgen`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def show_version(value: bool) -> None:
    if value:
        print(f"kerasllm {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    context: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks and TensorFlow's start-up log.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit.")] = False,
    backend: BackendOption = None,
):
    if not debug:  # the libraries' warnings and log records go to the run's library.log, not the terminal
        quiet.keep_library_output()
        context.call_on_close(quiet.restore_library_output)  # put back when the command ends
    if backend:
        distribute.set_backend(backend)


app.command("list")(models.list_models)
app.command()(models.info)
app.command("runs")(models.list_runs)
app.command()(training.train)
app.command()(using.evaluate)
app.command()(using.generate)
app.command()(models.download)
app.command()(serving.chat)
app.command()(serving.serve)
app.command()(using.predict)
app.command()(training.finetune)
app.command()(exporting.export)
app.command()(exporting.compress)
app.command()(models.doctor)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
