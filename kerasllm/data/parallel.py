"""Parallel text for seq2seq: (source text, target references) pairs from files, folders, JSONL or TFDS.

Sources (`--data`):

* two line-aligned files, source first: `--data train.en,train.de` (`.gz` is read too);
* a folder of `<split>.<lang>[.gz]` files, as Multi30k's (`train.en`, `train.de`, `val.en`, …), with the direction set by
  `seq2seq.source_lang` / `seq2seq.target_lang` (`train`, `val`/`valid`/`dev`/`validation`, and the
  first `test*` split are used);
* a `.tsv` file of `source<TAB>target` lines;
* a `.jsonl` file with `seq2seq.source_field` / `seq2seq.target_field` (default `source`, `target`),
  or a folder of `train.jsonl`, `dev.jsonl`, `test.jsonl` (SciTLDR). A list of strings on the
  source side is joined with spaces; on the target side it is a list of references:
  `seq2seq.target_lists=expand` trains on one pair per reference, `first` on the first one only;
  evaluation scores against all of them;
* `tfds:NAME` with one text feature per language (`tfds:ted_hrlr_translate/pt_to_en`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasllm.core.errors import UserError
from kerasllm.core.files import absent
from kerasllm.data import tfds as tfds_source
from kerasllm.data.text import read_text_file

SPLITS = {"train": ("train",), "validation": ("val", "valid", "dev", "validation")}
NOT_LANGUAGES = {"md", "txt", "csv", "tsv", "py", "zip", "tar", "src", "tgt", "trg", "out", "raw", "tok", "bpe"}
# SOURCE.md, README.txt, … beside the data; train.src / train.tgt name sides, not languages
LEGACY_LANGUAGES = ("pt", "en")  # the recipes' languages before local files named their own; older runs' configs hold them


def file_language(path: Path) -> str:
    """The language a file's suffix names (`train.de`, `a.en.gz`), or "" where the suffix is not a language code."""
    name = path.name.removesuffix(".gz")
    split, dot, lang = name.rpartition(".")
    return lang.lower() if dot and split and lang.isalpha() and len(lang) <= 3 and lang.lower() not in NOT_LANGUAGES else ""


@dataclass
class Languages:
    """The direction the data has: what the files or the tfds config name say, else what the config set."""

    source: str = ""
    target: str = ""
    note: str = ""


@dataclass
class Pairs:
    """Source texts and, for each, one or more target references."""

    sources: list[str]
    references: list[list[str]]

    def __len__(self) -> int:
        return len(self.sources)

    def training_pairs(self, target_lists: str) -> tuple[list[str], list[str]]:
        """(source, target) pairs for training: one per reference (`expand`) or the first only."""
        sources, targets = [], []
        for source, references in zip(self.sources, self.references):
            for reference in references if target_lists == "expand" else references[:1]:
                sources.append(source)
                targets.append(reference)
        return sources, targets


@dataclass
class PairSplit:
    train: Pairs
    validation: Pairs
    test: Pairs | None
    record: dict


def read_lines(path: Path) -> list[str]:
    text = read_text_file(path)
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def aligned(source_path: Path, target_path: Path) -> Pairs:
    sources, targets = read_lines(source_path), read_lines(target_path)
    if len(sources) != len(targets):
        raise UserError(f"{source_path} has {len(sources):,} lines but {target_path} has {len(targets):,}; "
                        "pair files must be line-aligned (line i of one translates line i of the other)")
    return checked(Pairs(sources, [[t] for t in targets]), f"{source_path.name} / {target_path.name}")


def checked(pairs: Pairs, where: str) -> Pairs:
    for number, (source, references) in enumerate(zip(pairs.sources, pairs.references), 1):
        if not source.strip():
            raise UserError(f"{where}: pair {number} has an empty source; remove the pair or fill it")
        if not references or not all(r.strip() for r in references):
            raise UserError(f"{where}: pair {number} has an empty target; remove the pair or fill it")
    if not pairs.sources:
        raise UserError(f"{where} holds no pairs")
    return pairs


def language_files(folder: Path) -> dict[str, dict[str, Path]]:
    """`{split: {lang: path}}` for `<split>.<lang>[.gz]` files."""
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        lang = file_language(path)
        if path.is_file() and lang:
            found.setdefault(path.name.removesuffix(".gz").rpartition(".")[0], {})[lang] = path
    return found


def language_folder(folder: Path, source_lang: str, target_lang: str) -> dict[str, Pairs]:
    files = language_files(folder)
    languages = sorted({lang for langs in files.values() for lang in langs})
    if len(languages) < 2:
        raise UserError(f"{folder} has no pair of <split>.<lang> files (such as train.en and train.de); name the files that "
                        "way, or pass SOURCE_FILE,TARGET_FILE, a .tsv or a .jsonl file")
    if not source_lang or not target_lang or source_lang not in languages or target_lang not in languages:
        raise UserError(f"{folder} has the languages {', '.join(languages)}; set the direction with "
                        f"--set seq2seq.source_lang={languages[0]} --set seq2seq.target_lang={languages[1]} (or the other way)")
    if source_lang == target_lang:
        raise UserError(f"seq2seq.source_lang and seq2seq.target_lang are both {source_lang}, so the model would learn to "
                        "copy; set two languages")
    splits = {}
    tests = sorted(name for name in files if name.startswith("test"))
    for split, names in {**SPLITS, "test": tuple(tests[:1])}.items():
        for name in names:
            langs = files.get(name, {})
            if source_lang in langs and target_lang in langs:
                splits[split] = aligned(langs[source_lang], langs[target_lang])
                break
    if "train" not in splits:
        raise UserError(f"{folder} has no train.{source_lang} and train.{target_lang}; name the training files that way")
    return splits


def read_tsv(path: Path) -> Pairs:
    sources, references = [], []
    for number, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) != 2:
            raise UserError(f"{path} line {number} has {len(columns)} tab-separated columns; write 'source<TAB>target'")
        sources.append(columns[0])
        references.append([columns[1]])
    return checked(Pairs(sources, references), str(path))


def read_jsonl(path: Path, source_field: str, target_field: str) -> Pairs:
    sources, references = [], []
    for number, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path} line {number} is not JSON ({error.msg}); write one object per line") from error
        for field in (source_field, target_field):
            if not isinstance(row, dict) or field not in row:
                raise UserError(f"{path} line {number} has no field {field!r}"
                                f"{' (it has ' + ', '.join(row) + ')' if isinstance(row, dict) else ''}; "
                                "set seq2seq.source_field / seq2seq.target_field")
        source, target = row[source_field], row[target_field]
        sources.append(" ".join(map(str, source)) if isinstance(source, list) else str(source))
        references.append([str(t) for t in target] if isinstance(target, list) else [str(target)])
    return checked(Pairs(sources, references), str(path))


def tfds_languages(name: str, source_lang: str, target_lang: str) -> tuple[str, str]:
    """The direction of a tfds translation set: the config's, else what a config name like `pt_to_en` says."""
    if not source_lang and not target_lang:
        config_name = name.partition("/")[2]
        source, to, target = config_name.partition("_to_")
        if to and source and target:
            return source, target
    return source_lang, target_lang


def tfds_pairs(name: str, source_lang: str, target_lang: str) -> dict[str, Pairs]:
    info = tfds_source.prepared_info(name)
    features = list(info.features.keys()) if hasattr(info.features, "keys") else []
    if source_lang not in features or target_lang not in features:
        raise UserError(f"tfds:{name} has the features {', '.join(features)}; set seq2seq.source_lang and seq2seq.target_lang to two of them")
    if source_lang == target_lang:
        raise UserError(f"seq2seq.source_lang and seq2seq.target_lang are both {source_lang}, so the model would learn to "
                        "copy; set two languages")
    splits = {}
    for split in tfds_source.split_names(info):
        rows = list(tfds_source.load_split(name, split).as_numpy_iterator())
        key = "validation" if split in SPLITS["validation"] else split
        splits[key] = Pairs([r[source_lang].decode("utf-8") for r in rows], [[r[target_lang].decode("utf-8")] for r in rows])
    return splits


def pair_file_languages(first: Path, second: Path, source_lang: str, target_lang: str) -> Languages:
    """The direction of SOURCE_FILE,TARGET_FILE: the files' language suffixes (`a.en,a.de`), which a config may repeat
    but not contradict; without suffixes, what the config set."""
    named = file_language(first), file_language(second)
    if not all(named):
        return Languages(source_lang, target_lang)
    if named[0] == named[1]:
        raise UserError(f"--data names two {named[0]} files ({first.name}, {second.name}), so the model would learn to "
                        "copy; pass the source file and its translation")
    asked = (source_lang, target_lang)
    if asked == LEGACY_LANGUAGES and named != asked:
        return Languages(*named, note=f"the config's languages pt → en were the recipe's old default; the files say "
                                      f"{named[0]} → {named[1]}, and the run takes that")
    for side, said, name, path in (("source", source_lang, named[0], first), ("target", target_lang, named[1], second)):
        if said and said != name:
            raise UserError(f"seq2seq.{side}_lang is {said} but the {side} file {path.name} is {name}; drop the setting, or "
                            "pass the files as --data SOURCE_FILE,TARGET_FILE")
    return Languages(*named)


def gather(source: str, options) -> tuple[dict[str, Pairs], Languages]:
    """The splits of a parallel-text source and their direction; `options` is the seq2seq config section (languages,
    JSONL fields)."""
    given = Languages(options.source_lang, options.target_lang)
    if source.startswith("tfds:"):
        name = source.removeprefix("tfds:")
        languages = Languages(*tfds_languages(name, options.source_lang, options.target_lang))
        return tfds_pairs(name, languages.source, languages.target), languages
    if "," in source and not Path(source).exists():
        names = [part.strip() for part in source.split(",", 1)]
        if not all(names):
            raise UserError(f"--data {source} names one file; pass two line-aligned files as --data SOURCE_FILE,TARGET_FILE")
        first, second = (Path(name).expanduser() for name in names)
        for path in (first, second):
            if not path.is_file():
                raise UserError(f"{path} {absent(path)}; pass two line-aligned files as --data SOURCE_FILE,TARGET_FILE")
        if first.resolve() == second.resolve():
            raise UserError(f"--data names {first} as both the source and the target, so the model would learn to copy; "
                            "pass the source file and its translation")
        languages = pair_file_languages(first, second, options.source_lang, options.target_lang)
        return {"train": aligned(first, second)}, languages
    path = Path(source).expanduser()
    if path.is_dir():
        jsonl = {split: path / f"{name}.jsonl" for split, names in {**SPLITS, "test": ("test",)}.items() for name in names
                 if (path / f"{name}.jsonl").is_file()}
        if "train" in jsonl:
            return {split: read_jsonl(file, options.source_field, options.target_field) for split, file in jsonl.items()}, given
        return language_folder(path, options.source_lang, options.target_lang), given
    if path.is_file():
        if path.suffix == ".jsonl":
            return {"train": read_jsonl(path, options.source_field, options.target_field)}, given
        if path.suffix == ".tsv":
            return {"train": read_tsv(path)}, given
        raise UserError(f"{path} is one file; pass two line-aligned files (--data a.en,a.de), a .tsv or .jsonl file, or a folder")
    raise UserError(f"data path {path} {absent(path)}; pass SOURCE_FILE,TARGET_FILE, a folder of <split>.<lang> files, "
                    "a .tsv or .jsonl file, or tfds:NAME")


def digest(*parts: Pairs | None) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        if part is not None:
            hasher.update(json.dumps([part.sources, part.references], ensure_ascii=False).encode("utf-8"))
    return hasher.hexdigest()


def load_pairs(source: str, options, validation_fraction: float = 0.1) -> PairSplit:
    """Training, validation (the source's, else a seeded random fraction) and test pairs, with a record."""
    splits, languages = gather(source, options)
    train, validation, test = splits.get("train"), splits.get("validation"), splits.get("test")
    if train is None or not len(train):
        raise UserError(f"{source} has no training pairs")
    if validation is None:
        order = np.random.default_rng(0).permutation(len(train))
        cut = int(round(len(train) * (1 - validation_fraction)))
        pick = lambda index: Pairs([train.sources[i] for i in index], [train.references[i] for i in index])
        train, validation = pick(order[:cut]), pick(order[cut:])
        how = f"seeded random {validation_fraction:.0%} of the training pairs is validation"
    else:
        how = "the source's validation split is validation"
    if not len(validation):
        raise UserError(f"the validation split of {source} is empty; use more pairs or a larger data.validation_fraction")
    record = {"source": source, "sha256": digest(train, validation, test), "split": how, "validation_fraction": validation_fraction,
              "source_lang": languages.source, "target_lang": languages.target, "train_pairs": len(train),
              "validation_pairs": len(validation), "test_pairs": len(test) if test else 0,
              "references_per_source": round(float(np.mean([len(r) for r in train.references])), 3)}
    if languages.note:
        record["languages_note"] = languages.note
    return PairSplit(train, validation, test, record)
