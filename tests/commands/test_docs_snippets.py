"""Every `kerasllm …` command in the README's and docs/'s code blocks is one the command line takes as written: the
command exists, each option exists and has its value, no word is left over, and a `train` line's model, `--preset`,
`--config` and `--set` keys resolve into a valid config. A renamed flag or config key fails here, in the fast tier,
before a user copies the snippet; the heavy tier's tours (`test_tour.py`) then run the commands themselves."""

import re
import shlex
from pathlib import Path

import pytest
import typer.main
from typer._click import Context
from typer._click.exceptions import ClickException

from kerasllm import catalog, cli
from kerasllm.core import config as config_lib

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
INNER = re.compile(r"\$\((kerasllm\s[^)]*)\)")  # `$(kerasllm runs --latest MODEL)`: a command, and a value in its line
COMMAND = re.compile(r"(?:^|&&)\s*(kerasllm\s[^#]*)")  # a command line, up to a comment


def code_lines(page: Path) -> list[str]:
    """The lines of a page's fenced code blocks, with backslash continuations joined."""
    lines, inside, pending = [], False, ""
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        text = pending + line
        if text.rstrip().endswith("\\"):
            pending = text.rstrip()[:-1] + " "
            continue
        lines.append(text)
        pending = ""
    return lines


def commands_in(page: Path) -> list[str]:
    found = []
    for line in code_lines(page):
        found += [match.group(1).strip() for match in INNER.finditer(line)]
        found += [match.group(1).strip() for match in COMMAND.finditer(INNER.sub("$RUN", line))]
    return found


SNIPPETS = [(page.relative_to(ROOT).as_posix(), line) for page in PAGES for line in commands_in(page)]


def test_the_pages_hold_the_commands_they_teach():
    """The pattern finds what a user copies (a guard that the checks below check something)."""
    pages = {page for page, _ in SNIPPETS}
    assert len(SNIPPETS) >= 60 and {"README.md", "docs/language-models.md", "docs/chat-and-serve.md"} <= pages
    assert any(line.startswith("kerasllm runs --latest") for _, line in SNIPPETS)  # found inside `RUN=$(…)`


@pytest.mark.parametrize("page, line", SNIPPETS, ids=[f"{page}:{i}" for i, (page, _) in enumerate(SNIPPETS)])
def test_each_documented_command_parses_as_written(page, line):
    words = shlex.split(re.sub(r"\[[^\]]*\]", "", line))  # `[--json]`: an option shown as optional
    group = typer.main.get_command(cli.app)
    name, args = words[1], words[2:]
    assert name in group.commands, f"{page}: `{line}`: no command {name!r}"
    command = group.commands[name]
    try:
        values, left, _ = command.make_parser(Context(command, info_name=name)).parse_args(list(args))
    except ClickException as error:
        pytest.fail(f"{page}: `{line}`: {error.format_message()}")
    assert left == [], f"{page}: `{line}`: {left} taken by no argument or option"
    for param in command.params:  # a value a choice-typed option does not take
        if values.get(param.name) is not None and hasattr(getattr(param, "type", None), "choices"):
            for value in values[param.name] if isinstance(values[param.name], list) else [values[param.name]]:
                assert value in param.type.choices, f"{page}: `{line}`: {param.name}={value!r}"
    if name == "train":
        check_train_config(page, line, values)


def check_train_config(page: str, line: str, values: dict) -> None:
    """A `train MODEL` line's model, preset, config file and `--set` keys and values make a valid config."""
    model = values.get("name")
    if model is None or model.startswith("$"):
        return
    spec = catalog.model(model)
    config_file = values.get("config_file")
    overrides = [item for item in values.get("overrides") or [] if "$" not in item]
    try:
        config_lib.resolve(spec, ROOT / config_file if config_file else None, overrides, values.get("preset"))
    except Exception as error:  # noqa: BLE001 (the message is the finding)
        pytest.fail(f"{page}: `{line}`: {error}")
