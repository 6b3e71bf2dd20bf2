"""The README an export folder gets: for each exported file, what it needs beside it and a snippet that runs it
with TensorFlow / Keras alone, on example inputs saved beside it (`<stem>.example.json`: the check batch and
kerasllm's own top-1 outputs on it, so the snippet ends by comparing).

Each export rewrites only its own section (between `<!-- export: NAME -->` markers) and drops the sections of files
that are gone. A README.md that kerasllm did not write is never touched.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kerasllm.core import compat, files

README = "README.md"
MARK = "<!-- written by `kerasllm export`: each export into this folder rewrites its own section -->"
SECTION = re.compile(r"<!-- export: (?P<name>[^>]+) -->\n.*?<!-- end: (?P=name) -->\n", re.S)


@dataclass
class Usage:
    """What a snippet needs to know about one export.

    Args:
        out: the exported file or SavedModel folder.
        fmt: keras, h5, savedmodel or tflite.
        example: `<stem>.example.json`'s name (beside `out`).
        companions: (run file name, the copy's path relative to the export folder), e.g. ("labels.json", "model.labels.json").
        imports: modules a Keras file needs for its layers (`kerasllm.zoo.layers`, `keras_hub`).
        feeds: TFLite: (the interpreter's input name, the example's input name) for each input.
        signatures: SavedModel: (name, example text, the line that calls it or "") of the signatures that take strings.
        tf_text: the SavedModel's signatures run TensorFlow Text ops.
        single: the model takes one tensor (not a dict of named inputs).
        next_tokens: the outputs are next-token scores and the tokenizer file lists its vocabulary (char, word).
    """

    out: Path
    fmt: str
    example: str
    companions: list = field(default_factory=list)
    imports: list = field(default_factory=list)
    feeds: list = field(default_factory=list)
    signatures: list = field(default_factory=list)
    tf_text: bool = False
    single: bool = True
    next_tokens: bool = False


def example_record(batch, expected) -> str:
    """`<stem>.example.json`: the check inputs (dtype and values by input name) and the source model's top-1 outputs."""
    inputs = batch if isinstance(batch, dict) else {"inputs": batch}
    record = {"inputs": {name: {"dtype": str(np.asarray(value).dtype), "values": np.asarray(value).tolist()}
                         for name, value in inputs.items()},
              "top1": np.asarray(expected).argmax(-1).tolist()}
    return json.dumps(record, separators=(",", ":")) + "\n"


def keras_imports(model) -> list[str]:
    """The imports a `.keras` / `.h5` file of `model` needs before `load_model`: where its layer classes live."""
    roots = {type(layer).__module__.split(".")[0] for layer in compat.nested_layers(model)}
    return [name for root, name in (("kerasllm", "kerasllm.zoo.layers"), ("keras_hub", "keras_hub")) if root in roots]


def _load(usage: Usage) -> tuple[list[str], list[str]]:
    """(imports, the lines that load the export and compute `outputs` on `x`)."""
    name = usage.out.name
    if usage.fmt in ("keras", "h5"):
        return (["import keras", *(f"import {module}  # registers the layers this model is built from" for module in usage.imports)],
                [f'model = keras.saving.load_model("{name}")', "outputs = np.asarray(model.predict_on_batch(x))"])
    if usage.fmt == "savedmodel":
        imports = ["import tensorflow as tf"]
        if usage.tf_text:
            imports.append("import tensorflow_text  # noqa: F401  registers the tokenizer ops the signatures use")
        lines = [f'loaded = tf.saved_model.load("{name}")', "outputs = np.asarray(loaded.serve(x))"]
        for signature, text, call in usage.signatures:
            lines += (call.format(example=repr(text)).splitlines() if call else
                      [f"print({signature!r}, [text.decode() for text in loaded.{signature}(tf.constant([{text!r}])).numpy()])"])
        return imports, lines
    feeds = "{" + ", ".join(f'"{feed}": x' if usage.single else f'"{feed}": x["{key}"]' for feed, key in usage.feeds) + "}"
    if usage.fmt == "onnx":
        return (["import onnxruntime"],
                [f'session = onnxruntime.InferenceSession("{name}")', f"outputs = np.asarray(session.run(None, {feeds})[0])"])
    return (["from ai_edge_litert.interpreter import Interpreter  # LiteRT (pip install ai-edge-litert), TFLite's successor"],
            [f'runner = Interpreter(model_path="{name}").get_signature_runner()', f"(outputs,) = runner(**{feeds}).values()"])


def snippet(usage: Usage) -> str:
    """A Python script that runs the export on the example inputs and compares with kerasllm's outputs."""
    imports, load = _load(usage)
    lines = ["import json", "", "import numpy as np", *imports, "",
             f'example = json.load(open("{usage.example}"))',
             'inputs = {name: np.asarray(value["values"], value["dtype"]) for name, value in example["inputs"].items()}',
             'x = inputs["inputs"]' if usage.single else "x = inputs", *load,
             "top1 = outputs.argmax(-1)",
             # a handful of example outputs: a quantized copy may differ on one of them; `kerasllm export` measured it on more
             'print(f"top-1 agreement with kerasllm on these {top1.size} example outputs:", float((top1 == np.asarray(example["top1"])).mean()))']
    companions = dict(usage.companions)
    if files.LABELS_FILE in companions:
        lines += [f'class_names = json.load(open("{companions[files.LABELS_FILE]}"))["class_names"]',
                  'print("classes:", [class_names[i] for i in top1])']
    elif usage.next_tokens and files.TOKENIZER_FILE in companions:
        lines += [f'vocabulary = json.load(open("{companions[files.TOKENIZER_FILE]}"))["vocabulary"]',
                  # the most likely token after each example's last position (earlier positions each predict one token on
                  # from a prefix, which joined together reads like a broken model)
                  'print("next token after each example:", [vocabulary[row[-1]] for row in top1])']
    return "\n".join(lines) + "\n"


def section(usage: Usage, size: str) -> str:
    needs = [f"`{path}`" for _, path in usage.companions] + [f"`{usage.example}` (example inputs and kerasllm's top-1 outputs)"]
    notes = []
    if usage.fmt in ("keras", "h5") and usage.imports:
        notes.append(f"Loading it needs {' and '.join(f'`{module}`' for module in usage.imports)} importable "
                     "(`pip install kerasllm`), for the layers it is built from.")
    if usage.tf_text:
        notes.append("Its signatures run TensorFlow Text ops: `import tensorflow_text` before `tf.saved_model.load`.")
    return (f"<!-- export: {usage.out.name} -->\n## {usage.out.name} ({usage.fmt}, {size})\n\n"
            f"Files it uses: {', '.join(needs)}.{' ' + ' '.join(notes) if notes else ''} Run from this folder:\n\n"
            f"```python\n{snippet(usage)}```\n\n<!-- end: {usage.out.name} -->\n")


def write_readme(folder: Path, usage: Usage, size: str) -> Path | None:
    """Add or replace `usage`'s section in `folder/README.md`; None (nothing written) when a README.md there is not ours."""
    return write_section(folder, usage.out.name, section(usage, size))


def write_section(folder: Path, name: str, text: str) -> Path | None:
    """Add or replace the section of the file `name` (`text`, between its markers) in `folder/README.md`, dropping the
    sections of files that are gone; None (nothing written) when a README.md there is not ours."""
    path = Path(folder) / README
    old = path.read_text(encoding="utf-8") if path.is_file() else MARK + "\n"
    if not old.startswith(MARK):
        return None
    kept = [match.group(0) for match in SECTION.finditer(old)
            if match.group("name") != name and (Path(folder) / match.group("name")).exists()]
    text = (f"{MARK}\n# Exported models\n\nEach file below was checked against its source by `kerasllm export`. "
            "The snippets use TensorFlow / Keras (an ONNX file: onnxruntime; LiteRT files: ai-edge-litert) only.\n\n"
            + "\n".join([*kept, text]))
    files.write_text_atomic(path, text)
    return path
