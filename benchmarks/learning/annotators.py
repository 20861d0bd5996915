"""Simulated annotators: a gold utility per taste, and noisy preference / rating labels from it.

Every annotator exposes

- ``score(prompt, response) -> float``: the gold utility (higher is better);
- ``prefer(prompt, a, b, rng) -> int``: 0 when ``a`` is preferred, 1 when ``b`` is;
- ``rate(prompt, response, rng) -> bool``: a thumbs up.

``noise`` is the share of labels that are flipped, so ``noise=0.5`` gives coin-flip labels and
``noise=0`` gives the gold label (ties in the gold score are broken by ``rng``). An optional
``temperature`` > 0 makes the clean label Bradley-Terry distributed instead of a hard argmax.

The lexicons below are taken from the wording of ``training/data/support_sft.jsonl``
(apologies, offers of further help, imperative action verbs, the dismissive replies).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

APOLOGY_RE = re.compile(
    r"\b(i'?m sorry|i am sorry|sorry (for|about|to hear)|so sorry|apologi[sz]e|my apologies|"
    r"i understand how frustrating|i understand)\b", re.I)
OFFER_RE = re.compile(
    r"(further help|more help|help further|anything else|i'?m here\b|i am here\b|feel free to reply|"
    r"let me know)", re.I)
ACTION_VERBS = (
    "check", "use", "wait", "send", "upload", "click", "follow", "reset", "go", "choose", "open", "select",
    "take", "update", "add", "set", "start", "print", "press", "type", "confirm", "edit", "enter", "make",
    "keep", "restart", "reinstall", "look", "delete", "request", "cancel", "change", "log", "ask", "download",
    "contact", "return", "reply", "try", "submit", "call",
)
# An action is an imperative verb at the start of a clause (sentence start, after "please", "and", "then", ",").
ACTION_RE = re.compile(
    r"(?:^|[.!?]\s+|\bplease\s+|,\s*(?:and\s+)?|\band\s+|\bthen\s+)(" + "|".join(ACTION_VERBS) + r")\b", re.I)
# Concrete commitments / follow-ups in the dataset: "if ..., I'll ...", "we will send ...".
FOLLOWUP_RE = re.compile(r"\b(if (it|you|the|both|a|nothing|one)\b|i'll\b|i will\b|we will\b|we'll\b)", re.I)
UNHELPFUL_RE = re.compile(
    r"(can'?t help|cannot help|nothing we can do|not something we handle|contact someone else|\bi don'?t know\b|"
    r"that'?s how it is|not our problem|^please wait\.?$|^try again later\.?$|arrive when they arrive|"
    r"things break|remember it next time|stay locked|cannot be changed|can'?t be changed|talk to your bank|"
    r"keep it, then|works for us|are complicated|use a card that works|don'?t always work|keep all accounts|"
    r"everything was sent|emails get lost|orders are final|don'?t do invoices|your responsibility)", re.I)
CLARIFY_RE = re.compile(
    r"\b(could you|can you|would you|which|what|when|where|did you|do you|have you|has the|are you|is the|"
    r"is this|are both|does it|should i)\b[^.!?]*\?", re.I)
ASKS_DETAIL_RE = re.compile(r"\b(order number|email|date|address|photo|code|card|phone|item|version)\b", re.I)
POLITE_OPENER_RE = re.compile(r"^(sure|happy to (look into it|help)|of course|certainly)\b", re.I)
WORD_RE = re.compile(r"[a-z0-9']+", re.I)


def words(text: str) -> list[str]:
    """Lower-cased word tokens of ``text``."""
    return [w.lower() for w in WORD_RE.findall(text)]


def repetition(text: str) -> float:
    """Share of repeated word bigrams in ``text`` (0: none; near 1: degenerate loops)."""
    toks = words(text)
    bigrams = list(zip(toks, toks[1:]))
    if len(bigrams) < 2:
        return 0.0
    return 1.0 - len(set(bigrams)) / len(bigrams)


@dataclass(frozen=True)
class Features:
    """Surface features of a response shared by every annotator."""

    n_words: int
    apology: bool
    offer: bool
    n_actions: int
    followup: bool
    unhelpful: bool
    n_questions: int
    asks_detail: bool
    polite_opener: bool
    repetition: float
    complete: bool

    @property
    def empty(self) -> bool:
        return self.n_words == 0


def features(response: str) -> Features:
    """Extract :class:`Features` from a response text."""
    text = " ".join(response.split())
    questions = CLARIFY_RE.findall(text)
    return Features(
        n_words=len(words(text)),
        apology=bool(APOLOGY_RE.search(text)),
        offer=bool(OFFER_RE.search(text)),
        n_actions=len(ACTION_RE.findall(text)),
        followup=bool(FOLLOWUP_RE.search(text)),
        unhelpful=bool(UNHELPFUL_RE.search(text)),
        n_questions=max(len(questions), text.count("?") and 1),
        asks_detail=bool(questions) and bool(ASKS_DETAIL_RE.search(text)),
        polite_opener=bool(POLITE_OPENER_RE.search(text)),
        repetition=repetition(text),
        complete=text.endswith((".", "!", "?")),
    )


def classify_style(response: str) -> str:
    """Which dataset style a response looks like: unhelpful, clarifying, empathetic, terse (or empty)."""
    f = features(response)
    if f.empty:
        return "empty"
    if f.unhelpful:
        return "unhelpful"
    if f.n_questions and not f.n_actions:
        return "clarifying"
    if f.apology or f.offer or f.n_actions >= 2 or f.n_words > 14:
        return "empathetic"
    return "terse"


def _hygiene_penalty(f: Features) -> float:
    """Penalty every annotator applies: empty, truncated or repetitive output."""
    return 2.0 * f.empty + 0.5 * (not f.complete) + 4.0 * f.repetition


@dataclass
class Annotator:
    """Base class: subclasses define :meth:`score`; labels derive from it."""

    noise: float = 0.0
    temperature: float = 0.0
    rate_threshold: float = 1.0
    name: str = "base"

    def score(self, prompt: str, response: str) -> float:
        raise NotImplementedError

    def _clean_prefer(self, sa: float, sb: float, rng: random.Random) -> int:
        if self.temperature > 0:
            p_a = 1.0 / (1.0 + math.exp(-(sa - sb) / self.temperature))
            return 0 if rng.random() < p_a else 1
        if sa == sb:
            return rng.randrange(2)
        return 0 if sa > sb else 1

    def prefer(self, prompt: str, a: str, b: str, rng: random.Random) -> int:
        """0 if ``a`` is preferred, 1 if ``b``; a ``noise`` share of labels is flipped."""
        label = self._clean_prefer(self.score(prompt, a), self.score(prompt, b), rng)
        if self.noise > 0 and rng.random() < self.noise:
            label = 1 - label
        return label

    def rate(self, prompt: str, response: str, rng: random.Random) -> bool:
        """Thumbs up when the gold score reaches ``rate_threshold``; a ``noise`` share is flipped."""
        up = self.score(prompt, response) >= self.rate_threshold
        if self.noise > 0 and rng.random() < self.noise:
            up = not up
        return up


@dataclass
class EmpatheticAnnotator(Annotator):
    """The product story: apology + concrete actions + offer of further help beats a bare instruction."""

    rate_threshold: float = 2.0
    name: str = "empathetic"

    def score(self, prompt: str, response: str) -> float:
        f = features(response)
        s = 1.0 * f.apology + 1.0 * f.offer + 0.8 * min(f.n_actions, 3) + 0.5 * f.followup
        s -= 3.0 * f.unhelpful + 0.3 * (f.n_questions > 0 and f.n_actions == 0)
        s -= 0.02 * max(0, f.n_words - 60)
        return s - _hygiene_penalty(f)


@dataclass
class ConciseAnnotator(Annotator):
    """Short, correct, actionable answers; fluff (apologies, offers), questions and length cost."""

    rate_threshold: float = 0.8
    name: str = "concise"

    def score(self, prompt: str, response: str) -> float:
        f = features(response)
        answers = not f.unhelpful and f.n_questions == 0 and f.n_words >= 2
        s = 1.0 * answers + 0.5 * (f.n_actions >= 1)
        s -= 0.08 * max(0, f.n_words - 8) + 0.5 * f.apology + 0.5 * f.offer
        s -= 3.0 * f.unhelpful + 0.7 * (f.n_questions > 0)
        return s - _hygiene_penalty(f)


@dataclass
class ClarifyingAnnotator(Annotator):
    """Wants the assistant to ask for the missing detail (order number, email, ...) before acting."""

    rate_threshold: float = 1.5
    name: str = "clarifying"

    def score(self, prompt: str, response: str) -> float:
        f = features(response)
        s = 1.5 * (f.n_questions > 0) + 0.7 * f.asks_detail + 0.3 * f.polite_opener
        s -= 0.2 * max(0, f.n_questions - 2) + 0.3 * min(f.n_actions, 3) + 0.03 * max(0, f.n_words - 15)
        s -= 3.0 * f.unhelpful
        return s - _hygiene_penalty(f)


ANNOTATORS: dict[str, type[Annotator]] = {
    "empathetic": EmpatheticAnnotator,
    "concise": ConciseAnnotator,
    "clarifying": ClarifyingAnnotator,
}


def make_annotator(name: str, noise: float = 0.0, temperature: float = 0.0) -> Annotator:
    """An annotator from :data:`ANNOTATORS` by name."""
    try:
        cls = ANNOTATORS[name]
    except KeyError:
        raise ValueError(f"unknown annotator {name!r}; expected one of {sorted(ANNOTATORS)}") from None
    return cls(noise=noise, temperature=temperature)
