"""Using a run: `evaluate`, `generate` and `predict`, each through the run's task."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from kerasllm import distribute, generation, hub
from kerasllm.commands.common import (
    JsonFlag,
    MaxLengthOption,
    ModelOrRun,
    SampleSeedOption,
    TemperatureOption,
    TopKOption,
    TopPOption,
    UnsafeFlag,
    check_new_tokens,
    console,
    handle_errors,
    lines_of,
    load_run_and_model,
    load_tensorflow,
    new_table,
    note,
    print_json,
    progress_bar,
    show_table,
    write,
)
from kerasllm.core import files, validation
from kerasllm.core.errors import UserError
from kerasllm.core.words import a
from kerasllm.train import memory

SEQ2SEQ_ZERO = " (0 means the target rows' length for seq2seq models only)"


@handle_errors
def evaluate(
    source: ModelOrRun,
    data: Annotated[Optional[str], typer.Option(
        "--data", help="Evaluate on this data (all of it, or its test split) instead of the run's validation split.")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size for evaluation.")] = 64,
    beam: Annotated[int, typer.Option(help="Seq2seq: decode with beam search of this width (0: greedy).")] = 0,
    as_json: JsonFlag = False,
    unsafe: UnsafeFlag = False,
):
    """Evaluate a trained model with its task's metrics.

    Text generation: loss, perplexity, bits per character (and per token), next-token accuracy.
    Image classification: accuracy, top-5, per-class precision/recall/F1, confusion matrix.

    Examples: `kerasllm evaluate runs/lstm-textgen-20261129-120000` · `kerasllm evaluate RUN --data other.txt --json`
    """
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if beam < 0:
        raise UserError("--beam must be 0 (greedy) or a beam width of 1 or more")
    run, model = load_run_and_model(source, unsafe)
    if beam and "beam" not in run.task.evaluate_options:
        raise UserError(f"--beam applies to seq2seq models; {run.spec.name} is {a(run.task.name)} model")
    length = min([run.data_record[key] for key in ("sequence_length", "target_length") if run.data_record.get(key)] or [1])
    memory.check_batch(model, batch_size, length, training=False, setting="--batch-size", on_cpu=distribute.device_kind() == "CPU")
    options = {"beam": beam} if beam else {}
    with progress_bar(f"decoding ({f'beam {beam}' if beam else 'greedy'})", "sentences",
                      shown="on_progress" in run.task.evaluate_options) as advance:
        if "on_progress" in run.task.evaluate_options:
            options["on_progress"] = advance
        results = run.task.evaluate(model, run, data=data, batch_size=batch_size, **options)
    if as_json:
        return print_json(results)
    where = results.pop("data")
    for table in run.task.tables(results, f"{run.spec.name} on {where}"):
        show_table(list(table.columns), [[str(cell) for cell in row] for row in table.rows], title=table.title)
    for key, path in results.items():  # the files evaluate drew (a classifier's confusion matrix), each path whole
        if key.endswith("_png") and path:
            console.print(f"{key.removesuffix('_png').replace('_', ' ')} drawn in {path}", highlight=False, soft_wrap=True)


@handle_errors
def generate(
    source: Annotated[Path, typer.Argument(help="A run folder (or a .keras / .h5 model file inside one), or a keras-hub causal-LM "
                                                "preset: a bare name (gpt2_base_en), kaggle://…, hf://… or a local preset folder.")],
    prompt: Annotated[Optional[List[str]], typer.Option(help="Text to continue (language models) or to translate / summarize "
                                                              "(seq2seq); repeat for a batch.")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", help="Also take every non-empty line of this file as a prompt.")] = None,
    max_length: MaxLengthOption = 300,
    temperature: TemperatureOption = 0.8,
    top_k: TopKOption = 0,
    top_p: TopPOption = 1.0,
    stop: Annotated[Optional[List[str]], typer.Option(help="Stop a continuation at this text (not printed); repeatable.")] = None,
    beam: Annotated[int, typer.Option(help="Beam search with this many beams (temperature, top-k and top-p then do not apply); 0 samples "
                                           "(seq2seq: greedy).")] = 0,
    seed: SampleSeedOption = None,
    draft: Annotated[Optional[Path], typer.Option(help="Speculative decoding: a smaller transformer-lm run with the same "
                                                        "tokenizer proposes tokens that the run checks in one pass (the text "
                                                        "is the run's: the same greedy tokens, the same distribution).")] = None,
    draft_tokens: Annotated[int, typer.Option(help="With --draft: tokens the draft proposes per pass of the run.")] = 4,
    unsafe: UnsafeFlag = False,
):
    """Generate text with a trained text model: continue prompts (language models) or translate / summarize them (seq2seq).
    One prompt streams as it is produced.

    Examples: `kerasllm generate runs/lstm-textgen-20261129-120000 --prompt "The " --max-length 200 --top-p 0.9` ·
    `kerasllm generate runs/transformer-seq2seq-20261130-120000 --prompt "A man rides a bike." --beam 4` ·
    `kerasllm generate gpt2_base_en --prompt "The weather today" --max-length 40 --top-k 50`
    """
    generation.check_options(temperature, top_k, top_p, max_length, beam)
    if seed is not None and not 0 <= seed <= validation.SEED_MAX:
        raise UserError(f"--seed must be between 0 and {validation.SEED_MAX}")
    prompts = [*(prompt or []), *(lines_of(file, "prompt") if file is not None else [])] or [""]
    options = dict(max_length=max_length, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop or [], beam=beam)
    preset = None if source.is_file() or files.is_run_dir(source) else hub.resolve(str(source))
    if preset is not None:  # a keras-hub causal LM: kerasllm's samplers over its own cache
        check_new_tokens(max_length, SEQ2SEQ_ZERO)
        hub.check_reachable(preset, "model")  # offline: one line in seconds, before TensorFlow loads
        load_tensorflow()
        lm = hub.PresetLM(preset)
        generation.write_generations(lambda texts, **more: lm.generate(texts, **options, **more), prompts, write, continues_prompt=True)
        return
    if not source.exists():
        raise UserError(f"{source} does not exist; pass a run folder, a .keras or .h5 file, or a keras-hub preset: a bare name "
                        "(gpt2_base_en) or a folder `kerasllm download NAME` saved")
    run, model = load_run_and_model(source, unsafe)
    if not run.task.can_generate:
        raise UserError(f"{run.spec.name} is {a(run.task.name)} model; generate needs a text-generation or seq2seq model")
    if run.task.name != "seq2seq":  # a seq2seq run reads 0 as "the target rows' length"
        check_new_tokens(max_length, SEQ2SEQ_ZERO)
    if draft is not None:
        return generate_speculatively(run, model, draft, prompts, draft_tokens, unsafe, options)
    run.task.write_generations(model, run, prompts, write=write, on_note=note, **options)


def generate_speculatively(run, model, draft: Path, prompts: list[str], draft_tokens: int, unsafe: bool, options: dict) -> None:
    """`generate --draft`: a plain transformer-lm run's continuations with a draft run proposing (`kerasllm.speculative`);
    how many proposals the run kept, as a note after the text."""
    from kerasllm import speculative

    if run.task.name != "text-generation" or options["beam"]:
        raise UserError("--draft takes a plain language model's sampling or greedy decoding (not chat runs, seq2seq or --beam "
                        "yet); drop --draft")
    if draft_tokens < 1:
        raise UserError("--draft-tokens must be at least 1")
    draft_run, draft_model = load_run_and_model(draft, unsafe)
    sampling = {key: options[key] for key in ("temperature", "top_k", "top_p", "seed", "stop")}
    found = []

    def continuations(texts, on_text=None):
        outputs, counts = speculative.continuations(model, run, draft_model, draft_run, texts, max_length=options["max_length"],
                                                    k=draft_tokens, on_text=on_text, **sampling)
        found.append(counts)
        return outputs

    generation.write_generations(continuations, prompts, write, continues_prompt=True)
    note(found[-1].line())


@handle_errors
def predict(
    source: ModelOrRun,
    inputs: Annotated[Optional[List[str]], typer.Argument(
        help="What to classify: texts (text models; a tab separates a sentence pair) or image files / folders (image models).")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", help="Text models: classify every non-empty line of this file.")] = None,
    top_k: Annotated[int, typer.Option(help="Classes to show per input.")] = 3,
    as_json: JsonFlag = False,
    unsafe: UnsafeFlag = False,
):
    """Classify inputs with a trained classifier: the top-k classes with probabilities.

    Examples: `kerasllm predict runs/lstm-classifier-20261130-120000 "a gripping, funny film" --file reviews.txt` ·
    `kerasllm predict runs/cnn-classifier-20261129-120000 digit.png more_digits/ --top-k 3`
    """
    if top_k < 1:
        raise UserError("--top-k must be at least 1")
    inputs = [*(inputs or []), *(lines_of(file, "input") if file is not None else [])]
    if not inputs:
        raise UserError("nothing to classify; pass inputs as arguments or --file FILE")
    run, model = load_run_and_model(source, unsafe)
    if not run.task.can_predict:
        raise UserError(f"{run.spec.name} is {a(run.spec.task)} model; predict needs a classification model")
    rows = run.task.predict(model, run, inputs, top_k=top_k)
    if as_json:
        return print_json(rows)
    table = new_table("input", "class", "probability", "note", title=f"{run.spec.name} predictions")
    for row in rows:
        for rank, guess in enumerate(row["predictions"]):
            first = rank == 0
            table.add_row((row.get("text") or row.get("file")) if first else "", guess["class"], f"{guess['probability']:.4f}",
                          row["note"] if first else "")
    console.print(table)
