"""How close a transcript is to a reference text (a subtitle's dialogue): the character
error rate, on both texts normalised the same way, so that what is compared is what was
said, not how it was written. `scribeflow evaluate` and the run's sampled episodes
(subtitles.sample_share) both measure with it; the hallucination guard compares phrases
with the same normalisation."""

from __future__ import annotations

import unicodedata


def normalise(text: str) -> str:
    """Unicode NFKC (full-width letters and digits, half-width kana), case-folded, without
    punctuation, symbols, spaces and control characters."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in text if unicodedata.category(ch)[0] not in "PSZC")


def character_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(errors, reference characters) after normalise(); jiwer counts the edits."""
    import jiwer

    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        return len(hyp), 0
    if not hyp:
        return len(ref), len(ref)
    out = jiwer.process_characters([ref], [hyp])
    return out.substitutions + out.deletions + out.insertions, len(ref)
