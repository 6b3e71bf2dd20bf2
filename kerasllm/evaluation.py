"""Classification metrics from a confusion matrix, and its PNG.

`classification_report(labels, probabilities, class_names)` gives accuracy, top-k
accuracy, per-class precision/recall/F1/support, macro and weighted averages, the
confusion matrix (rows: true class, columns: predicted class) and the most confused
pairs. A class that is never predicted has precision 0; never present, recall 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Lazy imports: sacreBLEU, rouge-score and matplotlib are imported inside the functions that use them: `kerasllm
# --help` and `kerasllm list` load this module and must not load them.


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, int), np.asarray(predictions, int)), 1)
    return matrix


def per_class_metrics(matrix: np.ndarray) -> dict:
    """Precision, recall, F1 and support per class, plus macro and weighted averages."""
    true_positives = np.diag(matrix).astype(float)
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(true_positives, predicted, out=np.zeros_like(true_positives), where=predicted > 0)
    recall = np.divide(true_positives, support, out=np.zeros_like(true_positives), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    weights = support / max(support.sum(), 1)
    return {
        "precision": precision, "recall": recall, "f1": f1, "support": support,
        "macro": {"precision": precision.mean(), "recall": recall.mean(), "f1": f1.mean()},
        "weighted": {"precision": (precision * weights).sum(), "recall": (recall * weights).sum(), "f1": (f1 * weights).sum()},
    }


def most_confused(matrix: np.ndarray, class_names: list[str], count: int = 5) -> list[dict]:
    """The largest off-diagonal cells: (true class, predicted class, examples)."""
    off_diagonal = matrix.copy()
    np.fill_diagonal(off_diagonal, 0)
    order = np.argsort(off_diagonal, axis=None)[::-1][:count]
    pairs = [np.unravel_index(i, matrix.shape) for i in order]
    return [{"true": class_names[t], "predicted": class_names[p], "count": int(off_diagonal[t, p])}
            for t, p in pairs if off_diagonal[t, p] > 0]


def top_k_accuracy(labels: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    k = min(k, probabilities.shape[1])
    top = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
    return float((top == np.asarray(labels)[:, None]).any(axis=1).mean())


def classification_report(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str], top_k: int = 5) -> dict:
    matrix = confusion_matrix(labels, probabilities.argmax(axis=1), len(class_names))
    metrics = per_class_metrics(matrix)
    k = min(top_k, len(class_names) - 1)  # top-k of all the classes is always 1: reported only below that
    return {
        "examples": int(len(labels)),
        "accuracy": float(np.trace(matrix) / max(matrix.sum(), 1)),
        **({f"top_{k}_accuracy": top_k_accuracy(labels, probabilities, k)} if k >= 2 else {}),
        **{f"macro_{key}": float(value) for key, value in metrics["macro"].items()},
        **{f"weighted_{key}": float(value) for key, value in metrics["weighted"].items()},
        "per_class": [
            {"class": name, "precision": float(metrics["precision"][i]), "recall": float(metrics["recall"][i]),
             "f1": float(metrics["f1"][i]), "support": int(metrics["support"][i])}
            for i, name in enumerate(class_names)
        ],
        "confusion_matrix": matrix.tolist(),
        "most_confused": most_confused(matrix, class_names),
    }


def plot_confusion_matrix(matrix, class_names: list[str], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    size = max(4.0, 0.45 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(class_names)), class_names, rotation=90 if len(class_names) > 10 else 0)
    axis.set_yticks(range(len(class_names)), class_names)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    if len(class_names) <= 20:
        threshold = matrix.max() / 2 if matrix.size else 0
        for (row, column), value in np.ndenumerate(matrix):
            axis.text(column, row, str(value), ha="center", va="center", fontsize=8,
                      color="white" if value > threshold else "black")
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def write_confusion_png(matrix, class_names: list[str], path: Path, title: str) -> str:
    """The confusion-matrix PNG's path, or why it was not written (a read-only run folder)."""
    try:
        return str(plot_confusion_matrix(matrix, class_names, path, title=title))
    except OSError as error:
        return f"not written ({error.strerror}: the run folder is read-only)"


def text_scores(hypotheses: list[str], references: list[list[str]], rouge: bool = False) -> dict:
    """Corpus BLEU and chrF (sacreBLEU, detokenized text, with their signatures), and with `rouge` ROUGE-1/2/L F-measures
    (rouge-score, stemmed; the best over a source's references, averaged, as SciTLDR reports), all × 100."""
    import sacrebleu

    most = max(len(refs) for refs in references)
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(most)]
    bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
    bleu_score, chrf_score = bleu.corpus_score(hypotheses, streams), chrf.corpus_score(hypotheses, streams)
    scores = {"bleu": float(bleu_score.score), "chrf": float(chrf_score.score),
              "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature())}
    if rouge:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
        best = np.zeros((len(hypotheses), 3))
        for row, (hypothesis, refs) in enumerate(zip(hypotheses, references)):
            for ref in refs:
                result = scorer.score(ref, hypothesis)
                best[row] = np.maximum(best[row], [result[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")])
        scores.update({name: float(value) * 100 for name, value in zip(("rouge1", "rouge2", "rougeL"), best.mean(axis=0))})
    return scores
