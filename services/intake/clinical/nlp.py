"""Free text with clinical context: concept mentions found by phrase (a spaCy
span ruler built from concepts.yaml), each qualified by NegEx (negspacy) with
one termset per context category of context.yaml: negated, family history,
hypothetical, historical, uncertain.

The pipeline is a blank English spaCy pipeline (tokenizer, sentencizer, span
ruler, one negex component per category): no statistical model to download, the
same result on every machine. It is built once per process (`pipeline()`),
which takes a few seconds: intake builds it at start-up, off the event loop.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import spacy
from negspacy.negation import Negex  # noqa: F401  (registers the "negex" factory)
from negspacy.termsets import termset
from spacy.language import Language
from spacy.tokens import Doc, Span

from services.intake.clinical.rules import ContextName, Rules, load_rules

SPANS_KEY = "concepts"


@dataclass(frozen=True)
class Mention:
    """A concept named in a text: the words, where, and the context qualifying it."""

    concept: str
    words: str
    source: str
    context: str = "current"  # or one of context.yaml's categories
    cue: str = ""  # the words that set the context
    start: int = 0  # token offset in its text (to pair a finding with its nearest site)


def _phrases(phrase: str) -> list[str]:
    """A phrase and its plural (the last word + "s"), unless it already ends in s."""
    out = [phrase]
    last = phrase.split()[-1]
    if last.isalpha() and not last.endswith("s") and len(last) > 3:
        out.append(phrase + "s")
    return out


def _termset(rules: Rules, name: ContextName) -> dict[str, list[str]]:
    ts = rules.context.categories[name]
    base: dict[str, list[str]] = {
        "pseudo_negations": [],
        "preceding_negations": [],
        "following_negations": [],
        "termination": [],
    }
    if ts.extends:
        base = {k: list(v) for k, v in termset(ts.extends).get_patterns().items()}
    base["pseudo_negations"] += ts.pseudo
    base["preceding_negations"] += ts.preceding
    base["following_negations"] += ts.following
    base["termination"] += ts.termination
    return base


def build_pipeline(rules: Rules) -> Language:
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer", config={"punct_chars": [".", "!", "?", "\n"]})
    ruler = nlp.add_pipe(
        "span_ruler", config={"spans_key": SPANS_KEY, "phrase_matcher_attr": "LOWER"}
    )
    patterns = [
        {"label": c.id, "pattern": p}
        for c in rules.concepts
        for phrase in c.phrases
        for p in _phrases(phrase)
    ]
    ruler.add_patterns(patterns)  # type: ignore[attr-defined]
    for name in rules.context.precedence:
        nlp.add_pipe(
            "negex",
            name=f"context_{name}",
            config={
                "neg_termset": _termset(rules, name),
                "extension_name": f"ctx_{name}",
                "span_keys": [SPANS_KEY],
            },
        )
    return nlp


@functools.cache
def pipeline() -> Language:
    """The process's pipeline, built on first use."""
    return build_pipeline(load_rules())


def _kind(rules: Rules, label: str) -> str:
    return rules.concept(label).kind


def _longest(rules: Rules, spans: list[Span]) -> list[Span]:
    """Drop a span inside a longer one of the same kind ("thoracic" in "thoracic
    spine", "cancer" in "lung cancer"); spans of different kinds all stay."""
    kinds = {s.label_: _kind(rules, s.label_) for s in spans}
    kept = []
    for s in spans:
        inside = any(
            o is not s
            and kinds[o.label_] == kinds[s.label_]
            and o.start <= s.start
            and s.end <= o.end
            and (o.end - o.start) > (s.end - s.start)
            for o in spans
        )
        if not inside:
            kept.append(s)
    return kept


def _cue(doc: Doc, span: Span, name: ContextName, nlp: Language) -> str:
    """The context words nearest the mention in its sentence (for the explanation)."""
    negex: Any = nlp.get_pipe(f"context_{name}")
    sent = span.sent
    best = ""
    distance = len(doc) + 1
    for match_id, start, end in negex.matcher(doc):
        kind = nlp.vocab.strings[match_id]
        if kind not in ("Preceding", "Following") or not (sent.start <= start < sent.end):
            continue
        d = span.start - end if kind == "Preceding" else start - span.end
        if 0 <= d < distance:
            best, distance = doc[start:end].text, d
    return best


def read(texts: dict[str, str], rules: Rules | None = None) -> list[Mention]:
    """Every concept mention in the texts (source name -> text), in text order."""
    rules = rules or load_rules()
    nlp = pipeline()
    names = [n for n, t in texts.items() if t.strip()]
    out: list[Mention] = []
    for source, doc in zip(names, nlp.pipe(texts[n] for n in names), strict=True):
        spans = sorted(doc.spans[SPANS_KEY], key=lambda s: (s.start, -s.end))
        for span in _longest(rules, spans):
            context, cue = "current", ""
            for name in rules.context.precedence:
                if span._.get(f"ctx_{name}"):
                    context, cue = name, _cue(doc, span, name, nlp)
                    break
            out.append(Mention(span.label_, span.text, source, context, cue, span.start))
    return out
