"""A guard against the text Whisper invents: runaway repetition and silence-filling phrases.

Whisper, on music, noise or silence, tends to (1) loop: emit the same segment, or the
same phrase inside a segment, over and over, and (2) fill silence with phrases from
its training subtitles ("ご視聴ありがとうございました", "Thanks for watching",
"Subtitles by the Amara.org community"). The guard finds both in a transcript's
segments and either drops them (`drop`: loops are cut back to their first
occurrence, phrases removed) or marks them (`flag`: a "hallucination" key on the
segment). Either way every finding is counted and listed, so a transcript says what
was done to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from scribeflow.stages.transcription.quality import normalise

# Silence-filling phrases, matched against a whole segment's normalised text
# (NFKC, case-folded, without punctuation, symbols or spaces; see normalise()).
BUILTIN_PHRASES = [
    r"ご(視聴|清聴)(いただき)?(本当に)?(ありがとうございま(した|す))",
    r"チャンネル登録.*(お願いします|お願いいたします|よろしく).*",
    r"(最後まで)?ご視聴ありがとうございました.*",
    r"(thanks|thankyou)(so|very)?(much)?(for|4)watching(thisvideo|theshow|andsubscribe)?",
    r"(pleaselike|likeand|please|dontforgetto)subscribe.*",
    r"(subtitles?|subtitled|captions?|captioned|translated|transcribed|transcription|translation)"
    r"(providedby|createdby|madeby|by).*",
    r".*amaraorg.*",
    r"字幕(由|by|提供|制作|製作|翻訳|翻译).*",
    r"(谢谢|感谢)(大家|您)?的?(观看|收看)",
    r"请不吝点赞.*",
    r"시청해?\s*주셔서감사합니다",
    r"구독과좋아요.*",
]

# A loop inside a segment: a unit of up to 60 characters repeated back to back.
_REPEAT = re.compile(r"(.{1,60}?)\1+", re.S)
# Short runs are left alone whatever their count: "ha ha ha ha ha", "はははは".
MIN_RUN_CHARS = 20


@dataclass
class Guard:
    action: str = "drop"  # drop | flag | off
    max_repeats: int = 4
    phrases: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, tc: dict) -> "Guard":
        h = tc.get("hallucinations") or {}
        return cls(h.get("action", "drop"), h.get("max_repeats", 4), list(h.get("phrases", [])))

    def __post_init__(self):
        self._builtin = re.compile("|".join(f"(?:{p})" for p in BUILTIN_PHRASES))
        self._extra = {normalise(p) for p in self.phrases}

    def is_phrase(self, text: str) -> bool:
        norm = normalise(text)
        return bool(norm) and (norm in self._extra or self._builtin.fullmatch(norm) is not None)

    def apply(self, segments: list[dict]) -> tuple[list[dict], dict]:
        """The segments to keep (new dicts; the input is not changed) and the report:
        {"action", "repetition": n, "phrase": n, "segments": [{"start", "end", "reason", "text"}]}."""
        report = {"action": self.action, "repetition": 0, "phrase": 0, "segments": []}
        if self.action == "off":
            return [dict(s) for s in segments], report

        def found(seg: dict, reason: str) -> None:
            report[reason] += 1
            report["segments"].append({"start": seg["start"], "end": seg["end"], "reason": reason,
                                       "text": seg["text"][:200]})

        norms = [normalise(s["text"]) for s in segments]
        # Each segment's place in its run of identical segments, and the run's length.
        place, length = [0] * len(segments), [1] * len(segments)
        i = 0
        while i < len(segments):
            j = i
            while j + 1 < len(segments) and norms[i] and norms[j + 1] == norms[i]:
                j += 1
            for k in range(i, j + 1):
                place[k], length[k] = k - i, j - i + 1
            i = j + 1

        kept: list[dict] = []
        for i, seg in enumerate(segments):
            seg = dict(seg)
            reason = None
            if self.is_phrase(seg["text"]):
                reason = "phrase"
            elif length[i] > self.max_repeats and place[i] > 0:
                reason = "repetition"  # a looping segment: only its first occurrence stays
            if reason:
                found(seg, reason)
                if self.action == "flag":
                    seg["hallucination"] = reason
                    kept.append(seg)
                continue
            collapsed = self._collapse(seg)
            if collapsed is not None:
                found(seg, "repetition")
                if self.action == "flag":
                    seg["hallucination"] = "repetition"
                else:
                    seg = collapsed
            kept.append(seg)
        return kept, report

    def _collapse(self, seg: dict) -> dict | None:
        """The segment with each runaway repetition inside it cut back to one occurrence,
        or None when it has none. Words lying wholly inside a removed stretch go too."""
        text = seg["text"]
        cuts = []  # (start, end) character spans to remove
        for m in _REPEAT.finditer(text):
            unit = m.group(1)
            repeats = len(m.group(0)) // len(unit)
            if repeats > self.max_repeats and len(m.group(0)) >= MIN_RUN_CHARS and any(c.isalpha() for c in unit):
                cuts.append((m.start() + len(unit), m.end()))
        if not cuts:
            return None
        out = dict(seg)
        pieces, pos = [], 0
        for a, b in cuts:
            pieces.append(text[pos:a])
            pos = b
        pieces.append(text[pos:])
        out["text"] = "".join(pieces).strip()
        if seg.get("words"):
            words, offset = [], 0
            raw = "".join(w["word"] for w in seg["words"])
            # Word offsets refer to the segment's text when it is their concatenation.
            shift = raw.find(text.strip()) if text.strip() else 0
            for w in seg["words"]:
                a, b = offset - max(shift, 0), offset - max(shift, 0) + len(w["word"])
                offset += len(w["word"])
                if not any(ca <= a and b <= cb for ca, cb in cuts):
                    words.append(w)
            out["words"] = words
        return out
