"""Text quality of generated replies: sacrebleu BLEU and chrF (corpus level, default settings,
signatures recorded), ROUGE-L F1 (rouge-score, Porter stemmer), exact match after normalisation,
per-example chrF for paired statistics, and a paired bootstrap interval of tuned minus base.

Scales: BLEU, chrF and ROUGE-L on 0-100 (as sacrebleu reports them); exact match a fraction in 0-1.
"""

from __future__ import annotations

import random
import statistics
from typing import Any

from ..data import normalise

BOOTSTRAP_ROUNDS = 1000
CONFIDENCE = 0.95


def text_metrics(replies: list[str], references: list[str]) -> dict[str, Any]:
    import sacrebleu
    from rouge_score import rouge_scorer

    assert len(replies) == len(references)
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    corpus_bleu = bleu.corpus_score(replies, [references])
    corpus_chrf = chrf.corpus_score(replies, [references])
    per_chrf = [chrf.sentence_score(r, [ref]).score for r, ref in zip(replies, references)]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    per_rouge = [100 * scorer.score(ref, r)["rougeL"].fmeasure for r, ref in zip(replies, references)]
    per_exact = [float(normalise(r) == normalise(ref)) for r, ref in zip(replies, references)]
    n = max(len(replies), 1)
    return {
        "bleu": corpus_bleu.score,
        "chrf": corpus_chrf.score,
        "rouge_l": sum(per_rouge) / n,
        "exact_match": sum(per_exact) / n,
        "chrf_sentence_mean": sum(per_chrf) / n,
        "reply_words_mean": sum(len(r.split()) for r in replies) / n,
        "empty_replies": sum(1 for r in replies if not r.strip()),
        "per_example": {"chrf": per_chrf, "rouge_l": per_rouge, "exact_match": per_exact},
        "signatures": {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature()),
                       "rouge_l": "rouge-score rougeL F1 x100, Porter stemmer", "exact_match": "lora_bench.data.normalise"},
    }


def label_metrics(replies: list[str], references: list[str], labels: list[str]) -> dict[str, Any]:
    """A generated label against a closed label set: the reply's normalised text must name a label
    (exactly, or as its first word); anything else is an invalid prediction and counts as wrong."""
    from sklearn.metrics import f1_score

    index = {normalise(label): i for i, label in enumerate(labels)}
    predicted = []
    for reply in replies:
        key = normalise(reply)
        first = key.split(" ")[0].strip(".,;:!?") if key else ""
        predicted.append(index.get(key, index.get(first, -1)))
    truth = [index[normalise(r)] for r in references]
    n = max(len(truth), 1)
    return {
        "accuracy": sum(p == t for p, t in zip(predicted, truth)) / n,
        "macro_f1": float(f1_score(truth, predicted, labels=list(range(len(labels))), average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(truth, predicted, labels=list(range(len(labels))), average="weighted",
                                      zero_division=0)),
        "invalid_label_rate": sum(p < 0 for p in predicted) / n,
        "predicted": predicted,
        "truth": truth,
    }


def bootstrap_mean(values: list[float], seed: int = 0, rounds: int = BOOTSTRAP_ROUNDS,
                   confidence: float = CONFIDENCE) -> dict[str, float]:
    """Percentile bootstrap interval of the mean over examples (resampled with replacement)."""
    rng = random.Random(seed)
    n = len(values)
    if n == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "rounds": rounds}
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(rounds))
    tail = (1 - confidence) / 2
    low = means[int(tail * rounds)]
    high = means[min(rounds - 1, int((1 - tail) * rounds))]
    return {"mean": statistics.fmean(values), "low": low, "high": high, "rounds": rounds, "confidence": confidence}


def paired_delta(tuned: list[float], base: list[float], seed: int = 0) -> dict[str, Any]:
    """Tuned minus base per example, its mean and bootstrap interval; `beats_base` when the whole
    interval lies above zero."""
    assert len(tuned) == len(base)
    diffs = [t - b for t, b in zip(tuned, base)]
    interval = bootstrap_mean(diffs, seed)
    return {**interval, "beats_base": bool(interval["low"] > 0), "n": len(diffs),
            "method": f"paired percentile bootstrap of the per-example mean, {interval['rounds']} rounds"}
