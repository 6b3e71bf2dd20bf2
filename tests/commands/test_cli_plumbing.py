"""The CLI's argument plumbing: flags become the RunConfig the library receives (the trainer is patched out)."""

from pathlib import Path

import pytest

from kerasllm import cli
from kerasllm.core import files
from tests.commands.test_cli import assert_user_error, invoke


@pytest.fixture
def received(monkeypatch):
    """Replace the recipes' entry to the trainer: record what `kerasllm train` / `finetune` pass it and return a finished
    summary."""
    from kerasllm.recipes import runner

    calls = []

    def fake_train(config, run_dir, **options):
        calls.append((config, Path(run_dir), options))
        return {"nothing_to_do": True, "epochs_completed": config.train.epochs, "run": str(run_dir)}

    monkeypatch.setattr(runner, "train", fake_train)
    return calls


def test_flags_override_set_which_overrides_the_preset(runner, tmp_path, received, corpus_file):
    out = tmp_path / "run"
    result = invoke(runner, "train", "cnn-classifier", "--preset", "mnist", "--set", "train.epochs=7", "--epochs", "3",
                    "--batch-size", "16", "--seed", "5", "--strategy", "cpu", "--precision", "float32", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    ((config, run_dir, options),) = received
    assert (config.train.epochs, config.train.batch_size, config.train.seed) == (3, 16, 5)
    assert (config.runtime.strategy, config.runtime.precision, config.model_args.image_size) == ("cpu", "float32", 28)
    assert run_dir == out and options["resume"] is False and options["progress"] == "quiet"
    assert not out.exists()  # the CLI plans the folder; only the trainer writes it


def test_data_paths_are_made_absolute(runner, tmp_path, received, corpus_file, monkeypatch):
    monkeypatch.chdir(corpus_file.parent)
    result = invoke(runner, "train", "lstm-textgen", "--data", corpus_file.name, "--out", tmp_path / "r", "--quiet")
    assert result.exit_code == 0, result.output
    assert received[0][0].data.source == str(corpus_file.resolve())


def test_objective_flag_and_an_unknown_objective(runner, tmp_path, received):
    result = invoke(runner, "train", "transformer-classifier", "--objective", "mlm", "--out", tmp_path / "r", "--quiet")
    assert result.exit_code == 0, result.output
    assert received[0][0].train.objective == "mlm"
    assert_user_error(invoke(runner, "train", "transformer-lm", "--objective", "mlm", "--out", tmp_path / "r2"),
                      "transformer-lm has no objective 'mlm'; its objectives: causal-lm")
    assert len(received) == 1


def test_resume_passes_the_runs_own_config(runner, trained_run, received):
    result = invoke(runner, "train", "--resume", trained_run, "--epochs", "4", "--quiet")
    assert result.exit_code == 0, result.output
    ((config, run_dir, options),) = received
    assert run_dir == trained_run and options["resume"] is True
    assert config.train.epochs == 4 and config.model == "lstm-textgen" and config.model_args.units == 16
    assert_user_error(invoke(runner, "train", "--resume", trained_run, "--out", trained_run.parent / "x"), "drop --out/--overwrite")


def test_a_non_chief_worker_needs_out(runner, tmp_path, received, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}')
    assert_user_error(invoke(runner, "train", "lstm-textgen"), "every worker needs the same --out")
    result = invoke(runner, "train", "lstm-textgen", "--out", tmp_path / "shared", "--quiet")
    assert result.exit_code == 0 and received[0][1] == tmp_path / "shared"


def test_finetune_inherits_the_base_and_takes_the_flags(runner, trained_run, tmp_path, received, corpus_file):
    result = invoke(runner, "finetune", trained_run, "--data", corpus_file, "--method", "full", "--epochs", "2", "--seed", "9",
                    "--batch-size", "4", "--out", tmp_path / "ft", "--quiet")
    assert result.exit_code == 0, result.output
    ((config, run_dir, options),) = received
    assert config.train.batch_size == 4  # --batch-size, declared once, offered by train and finetune
    assert config.finetune.base == str((trained_run / files.MODEL_FILE).resolve())
    assert config.finetune.base_sha256 == files.file_sha256(trained_run / files.MODEL_FILE)
    assert (config.train.epochs, config.train.seed, config.model_args.units) == (2, 9, 16)
    assert options["parent"] is not None and options["artifacts"]["tokenizer"].kind == "char"
    assert_user_error(invoke(runner, "finetune", trained_run, "--method", "prune"), "--method must be full, freeze or lora")


def test_commands_are_registered_once():
    names = [command.name or command.callback.__name__ for command in cli.app.registered_commands]
    assert len(names) == len(set(names))


def test_flags_show_no_value_type_in_help(runner):
    """Typer 0.29 printed every on/off flag as `--json <bool>`, even `--help`; and a flag has no `--no-` twin."""
    from kerasllm import cli

    commands = [command.name or command.callback.__name__ for command in cli.app.registered_commands]
    assert len(commands) >= 10
    for name in [None, *commands]:
        result = runner.invoke(cli.app, [*([name] if name else []), "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "<bool>" not in result.output and "--no-" not in result.output, name


def test_no_developer_path_in_code_or_help():
    """`../shared/data` is where this project's benchmarks read their data, not a path a user has."""
    root = Path(__file__).resolve().parents[2]
    sources = list(root.joinpath("kerasllm").rglob("*.py"))  # kerasllm/zoo and kerasllm/cli.py link to zoo/ and cli.py
    found = [str(path) for path in sources if "shared/data" in "".join(
        line for line in path.read_text(encoding="utf-8").splitlines(keepends=True) if not line.lstrip().startswith("#"))]
    assert found == [], found


def test_plurals_and_articles():
    from kerasllm.core.words import a, count, were

    assert (count(1, "epoch"), count(2, "epoch"), count(1200, "batch", "batches")) == ("1 epoch", "2 epochs", "1,200 batches")
    assert (were(1), were(0)) == ("was", "were")
    assert (a("image-classification"), a("text-generation"), a("seq2seq")) == ("an image-classification", "a text-generation",
                                                                              "a seq2seq")


def test_the_card_names_the_metric_that_picked_the_best_epoch():
    from types import SimpleNamespace

    from kerasllm.train.reports import _best_by

    assert _best_by(SimpleNamespace(train=SimpleNamespace(monitor="val_loss"))) == "lowest validation loss (`val_loss`)"
    assert _best_by(SimpleNamespace(train=SimpleNamespace(monitor="val_accuracy"))) == "highest validation accuracy (`val_accuracy`)"


def test_piped_progress_is_whole_lines_at_any_width():
    """Not a terminal (a pipe, a CI log): one whole line per epoch, not a live bar cut at 80 columns."""
    import io

    from rich.console import Console

    from kerasllm.train.progress import Reporter

    out = io.StringIO()
    reporter = Reporter("rich", 12, 2160, 2048, "tokens", console=Console(file=out, width=40, soft_wrap=True))
    reporter.on_train_begin()
    reporter.on_epoch_begin(0)
    reporter.on_train_batch_end(2159, {"loss": 1.23456})
    reporter.on_epoch_end(0, {"loss": 1.23456, "val_loss": 1.5})
    reporter.close()
    (line,) = out.getvalue().splitlines()
    assert line.startswith("epoch 1/12 2160/2160 loss 1.2346 val_loss 1.5000 ") and line.endswith(tuple("0123456789"))
    assert "tokens/s" in line and "…" not in line and len(line) > 40  # longer than the console: not cut


def test_piped_tables_are_whole(runner):
    """Output that is not a terminal has no width to fit: tables keep every cell whole (no "parame…")."""
    for args in (["list"], ["info", "transformer-lm"]):
        for columns in (None, "80", "50"):  # piped, and an 80- or 50-column terminal: cells wrap, nothing ends in "…"
            result = runner.invoke(cli.app, args, env={"COLUMNS": columns})
            assert result.exit_code == 0 and "…" not in result.output, result.output
    assert "parameters" in runner.invoke(cli.app, ["list"]).output
    assert "model_args.intermediate_dim" in runner.invoke(cli.app, ["info", "transformer-lm"]).output


def test_info_lists_only_the_keys_the_model_reads(runner):
    import json

    def keys(name):
        return {row["key"] for row in json.loads(runner.invoke(cli.app, ["info", name, "--json"]).output)["keys"]}

    lm, classifier, image = keys("transformer-lm"), keys("lstm-classifier"), keys("cnn-classifier")
    assert "data.windows" in lm and "data.label_column" not in lm and "data.text_column" not in lm
    assert {"data.label_column", "data.text_column"} <= classifier and "data.windows" not in classifier
    assert "data.tokenizer" not in image and "data.sequence_length" not in image and "data.tokenizer" in lm
    assert not any(key in lm | classifier | image for key in ("finetune.base", "finetune.base_sha256"))  # written by finetune
    assert "finetune.method" in lm


def test_library_warnings_and_log_records_are_kept_not_printed(capsys):
    import logging
    import warnings

    from kerasllm.core import quiet

    mark = quiet.heard_mark()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        quiet.keep_library_output()
        try:
            warnings.warn("Do not pass an `input_shape`/`input_dim` argument to a layer.", UserWarning, stacklevel=1)
            logging.getLogger("tensorflow").warning("5 out of the last 5 calls to <function> triggered tf.function retracing")
            logging.getLogger("urllib3").info("below WARNING: not even kept")
        finally:
            quiet.restore_library_output()
    assert capsys.readouterr() == ("", "")
    kept = quiet.heard_since(mark)
    assert "UserWarning: Do not pass an `input_shape`" in kept and "tensorflow WARNING: 5 out of the last 5 calls" in kept
    assert "not even kept" not in kept
    assert quiet.heard_since(quiet.heard_mark()) == ""  # a later run hears only what comes after its mark


def test_a_command_puts_back_the_warnings_display_and_the_library_loggers(runner):
    import logging
    import warnings

    from kerasllm import cli

    shown, handlers = warnings.showwarning, list(logging.getLogger("tensorflow").handlers)
    assert runner.invoke(cli.app, ["info", "lstm-textgen"]).exit_code == 0
    assert warnings.showwarning is shown and logging.getLogger("tensorflow").handlers == handlers
    assert logging.getLogger("py.warnings").handlers == [] or all(type(h).__name__ != "_Keep" for h in logging.getLogger("py.warnings").handlers)


def test_the_kept_lines_are_bounded():
    from kerasllm.core import quiet

    heard = quiet._Heard(limit=3)
    for number in range(10):
        heard.add(f"line {number}")
    assert [line for _, line in heard.lines] == ["line 7", "line 8", "line 9"] and heard.count == 10


@pytest.mark.parametrize("width", [80, 100, 160])
def test_the_live_training_bar_stays_whole_in_a_terminal_of_any_width(width):
    """At 80 columns the bar once ended `0:00:… 0:00:…`: below 120 it drops the speed and the elapsed time instead."""
    import io

    from rich.console import Console
    from rich.progress import Progress

    from kerasllm.train.progress import Reporter

    console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)
    progress = Progress(*Reporter.columns(width), console=console)
    progress.add_task("epoch 10/10 (compiling)", total=12345, completed=1234, loss="1.2345", val_loss="1.2345",
                      speed="123,456 tokens/s")
    console.print(progress.make_tasks_table(progress.tasks))
    lines = [line for line in console.file.getvalue().splitlines() if line.strip()]
    assert len(lines) == 1 and "…" not in lines[0] and len(lines[0]) <= width, lines
    assert "1234/12345" in lines[0] and "1.2345" in lines[0]
    assert ("tokens/s" in lines[0]) == (width >= 120)
