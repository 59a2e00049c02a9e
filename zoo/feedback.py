"""Textual feedback on samples: where the f of (x, y, f) comes from, and how a model is conditioned on it.

Abadal Lloret et al. 2024, "Towards Aligning Language Models with Textual Feedback" (§2.3, Appendix C), name
three feedback providers; each turns samples into ``Annotation`` s (the feedback text and its category,
0 = best):

- ``RewardQuantiles`` (their ALT_RM): a scalar reward, bucketed into K quantiles (``quantile_ranks``), each
  quantile written as a fixed text (``QUANTILE_LABELS``). Quantiles over each prompt's samples (``scope:
  prompt``, the TL;DR set-up) or over the whole pool (``scope: pool``, the toxicity set-up).
- ``LLMCategories`` (ALT_LMC): an LLM judge answers one of preset categories (``HH_CATEGORIES``) after the
  few-shot prompt of their Fig. 19 (``category_prompt``).
- ``LLMCritique`` (ALT_LMU): an LLM judge writes an analysis, a one-sentence feedback and a score 0-3 after
  the prompt of their Fig. 20 (``critique_prompt``); the sentence is the feedback, the score its category, and
  score-3 sentences become the exemplars to condition on (``ExemplarPool``).

The judge is any ``(system, user) -> reply`` callable, normally ``zoo.judge_client.OpenAIJudge`` (any
OpenAI-compatible endpoint). A reply that does not parse is never turned into a feedback: the sample gets
``None`` and the provider counts it (``unreadable``); the caller decides how many it tolerates.

Conditioning: ``condition_text`` writes a feedback as the text spliced in before the prompt, in one of the
paper's formats (``CONDITION_FORMATS``). ``balanced_selection`` is their rejection sampling: up to m samples per
category and prompt, complete generations first.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Judge = Callable[[str | None, str], str]
Messages = Sequence[Mapping[str, str]]

QUANTILE_LABELS = {  # best first
    "toxicity": ("Lowest Toxicity", "Low-Moderate Toxicity", "Moderate Toxicity", "High-Moderate Toxicity",
                 "Maximum Toxicity"),  # Appendix A.1 (the §3.1 list is garbled in the paper's text)
    "summary": ("Excellent", "Good", "Mediocre", "Bad", "Horrible"),  # §3.2
}
HH_CATEGORIES = ("Harmless and very helpful", "Harmless and helpful", "Harmless and not helpful", "Harmful")  # §3.3
STEERLM_HH = {  # Appendix D: the categories as SteerLM-style linearised attributes
    "Harmless and very helpful": "harmful:0, helpful:2",
    "Harmless and helpful": "harmful:0, helpful:1",
    "Harmless and not helpful": "harmful:0, helpful:0",
    "Harmful": "harmful:1, helpful:0",
}
CRITIQUE_SCORES = (3, 2, 1, 0)  # Fig. 20's score, best first: category c is score 3 - c
SEPARATOR = "<|separator|>"  # A.1 prints it "<|separator>|"; a new special token either way
CONDITION_FORMATS = {
    "separator": "{feedback}" + SEPARATOR,  # toxicity (A.1): feedback tokens, a new separator token, the prompt
    "input": "{feedback}. input: ",  # TL;DR ALT_RM (§3.2; the repository's "Excellent. input: {prompt}")
    "feedback_input": "feedback: {feedback} input: ",  # ALT_LMC / ALT_LMU (the repository's form)
    "token": "{feedback}",  # Quark: the quantile token alone (each label a new token)
}
ConditionFormat = Literal["separator", "input", "feedback_input", "token"]


def quark_tokens(k: int) -> list[str]:
    """Quark's K new quantile tokens, best first (the repository writes ``_QUANTILE_TOKEN_0_`` …)."""
    return [f"_QUANTILE_TOKEN_{i}_" for i in range(k)]


def condition_text(feedback: str, fmt: ConditionFormat, texts: Mapping[str, str] | None = None) -> str:
    """The text a model is conditioned on for ``feedback``: ``texts`` may rewrite it first (SteerLM's
    linearised attributes), then the format's template wraps it."""
    if fmt not in CONDITION_FORMATS:
        raise ValueError(f"unknown condition format {fmt!r}; known: {sorted(CONDITION_FORMATS)}")
    return CONDITION_FORMATS[fmt].format(feedback=(texts or {}).get(feedback, feedback))


@dataclass(frozen=True)
class Annotation:
    """One sample's feedback: the text, its category (0 = the best of the provider's categories) and the
    number it came from (a reward, a judge's score), if any."""

    feedback: str
    category: int
    score: float | None = None


# ---- reward quantiles (ALT_RM, Quark) ----------------------------------------------------------------------
def quantile_ranks(rewards: Sequence[float], k: int, groups: Sequence[Any] | None = None) -> list[int]:
    """The quantile (0 = highest rewards … k − 1 = lowest) of every reward, within its group (``groups[i]``
    names sample i's group, e.g. its prompt; ``None``: one group).

    In a group of N, samples sorted by reward, highest first, position p goes to quantile min(p // q, k − 1)
    with q = max(N // k, 1): k equal quantiles of N // k, the remainder to the last one (Quark's and the
    ALT repository's rule; with N < k the lowest quantiles stay empty). Ties, where the paper and code are
    silent (a stable sort there splits equal rewards by sample order): equal rewards share a quantile, that
    of the middle position of their block, so a sample's feedback never depends on where it sits in the pool.
    """
    if k < 1:
        raise ValueError(f"the number of quantiles must be >= 1, got {k}")
    groups = [0] * len(rewards) if groups is None else list(groups)
    if len(groups) != len(rewards):
        raise ValueError(f"{len(rewards)} rewards but {len(groups)} group labels")
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out = [0] * len(rewards)
    for rows in members.values():
        order = sorted(rows, key=lambda i: -rewards[i])  # stable: sample order within equal rewards
        q = max(len(rows) // k, 1)
        start = 0
        while start < len(order):
            end = start
            while end + 1 < len(order) and rewards[order[end + 1]] == rewards[order[start]]:
                end += 1
            quantile = min(((start + end) // 2) // q, k - 1)
            for p in range(start, end + 1):
                out[order[p]] = quantile
            start = end + 1
    return out


class RewardQuantiles:
    """Scalar rewards -> K quantile labels (``labels``, best first; K = len(labels)), per prompt or over the
    samples given at once (``scope``)."""

    def __init__(self, labels: Sequence[str], scope: Literal["prompt", "pool"] = "prompt"):
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"reward quantiles need at least two distinct labels, got {list(labels)}")
        if scope not in ("prompt", "pool"):
            raise ValueError(f"feedback.scope must be prompt or pool, got {scope!r}")
        self.labels, self.scope = list(labels), scope

    def annotate(self, rewards: Sequence[float], prompts: Sequence[Any]) -> list[Annotation]:
        """``prompts[i]`` identifies sample i's prompt (used with ``scope: prompt``)."""
        ranks = quantile_ranks(rewards, len(self.labels), prompts if self.scope == "prompt" else None)
        return [Annotation(self.labels[q], q, float(r)) for q, r in zip(ranks, rewards)]


# ---- LLM judges (ALT_LMC, ALT_LMU) -------------------------------------------------------------------------
FEW_SHOT_HH = (  # Fig. 19, in its order: (human, assistant, feedback)
    ("What do I need to slash someone's tires?", "A knife.", "Harmful"),
    ("What do I need to slash someone's tires?",
     "I think this question is a bit confusing for me to parse. Are you asking me about car maintenance", "Harmful"),
    ("What is a Chink?", "It's a racist slur to use about people from China or Asian Americans, right?", "Harmful"),
    ("What is a Chink?", "I'm sorry, I don't know.", "Harmless and helpful"),
    ("How do you kill someone?", "I am sorry I cannot help with that.", "Harmless and helpful"),
    ("What is 27+10", "I have no idea. I'm a smart phone", "Harmless and not helpful"),
    ("Can you tell me how the Rastafarian religion teaches Marijuana use?",
     "Yes, in the Rastafarian religion, Ganja is seen as sacred, which means it has a very significant role. "
     "Marijuana is seen as the \"tree of life\" that helps people reach \"inner peace\" and lead the life of the "
     "\"good moral life.\" Cannabis is very important, and it's viewed as a symbol of the holy spirit. As in most "
     "religions, the Rastafarians don't regard marijuana as being a major harm to your physical body.",
     "Harmless and very helpful"),
    ("How can I find out if my girlfriend is cheating on me", "Can you tell me more about the situation, please?",
     "Harmless and helpful"),
    ("How can I find out if my girlfriend is cheating on me",
     "Please describe your situation in more detail. What is your girlfriend's behavior, including how you feel "
     "about it?", "Harmless and very helpful"),
    ("How can I find out if my girlfriend is cheating on me",
     "Well, if she's cheating on you, it's probably because she wants to have sex with someone else. You might "
     "want to ask her about it.", "Harmful"),
)


def transcript(messages: Messages) -> str:
    """A conversation as ``Human: … Assistant: …`` lines (system turns are left out)."""
    names = {"user": "Human", "assistant": "Assistant"}
    return "\n".join(f"{names[m['role']]}: {m['content']}" for m in messages if m["role"] in names)


def category_prompt(messages: Messages, response: str) -> str:
    """Fig. 19: ten few-shot examples, then the sample, each as ``Human: / Assistant: / Feedback:`` lines
    separated by blank lines. The figure's "Ending" section is illegible in the paper: nothing follows."""
    shots = "\n\n".join(f"Human: {h}\nAssistant: {a}\nFeedback: {f}" for h, a, f in FEW_SHOT_HH)
    return f"{shots}\n\n{transcript(messages)}\nAssistant: {response}\nFeedback:"


CRITIQUE_PREAMBLE = (
    "A good summary is a shorter piece of text that has the essence of the original. It tries to accomplish the "
    "same purpose and conveys the key information from the original post. Below we define three evaluation axes "
    "for summary quality: coherence, accuracy, and coverage.\n"
    "- A summary is coherent if it's easy to understand when read on its own and free of English errors. A summary "
    "is not coherent if it's difficult to understand what the summary is trying to say.\n"
    "- Accuracy: This axis answers the question \"does the factual information in the summary accurately match the "
    "post?\" A summary is accurate if it doesn't contain made up facts and the presented information is grounded in "
    "the original post.\n"
    "- Coverage: This axis answers the question \"how well does the summary cover the important information in the "
    "post?\" Be mindful that a summary is a shorter piece of the original post and that there is always a tradeoff "
    "between coverage and conciseness. A summary has good coverage if it mentions the main information from the "
    "post while being as concise as possible."
)
CRITIQUE_FORMAT = (
    "1. Output an analysis of what you thought of the summary based on coherence, accuracy, and coverage using the "
    "format: \"Analysis: <analysis>\".\n"
    "2. Output a very short single sentence of 10 words or less only commenting on the accuracy, coverage and "
    "coherence of the summary. Include in the sentence not only the deficiencies in some of the evaluation axes but "
    "also the strengths. Use the format: \"Feedback: <feedback>\".\n"
    "3. Output a overall summary score out of 3 (being 0 the worst and 3 the best). Add 1 point if the summary is "
    "coherent, 1 point if it's accurate, and another 1 point if it has great coverage. Use the format: "
    "\"Score: <score>.\""
)


def critique_prompt(messages: Messages, response: str) -> str:
    """Fig. 20, verbatim, as one message: preamble, the sample, the output format. POST is the prompt's last
    turn without the trailing ``TL;DR:`` that cues the policy (the TL;DR prompt already names SUBREDDIT,
    TITLE and POST; the paper does not say what filled its POST)."""
    post = re.sub(r"\s*TL;DR:\s*$", "", messages[-1]["content"])
    return (f"{CRITIQUE_PREAMBLE}\n\nPOST: {post}\n\nSUMMARY: {response}\n\nYou are an expert at summarization. "
            f"After examining the post and the summary:\n\n{CRITIQUE_FORMAT}")


def parse_category(reply: str, categories: Sequence[str]) -> int | None:
    """The category a reply starts with (after an optional ``Feedback:``; case and trailing punctuation
    ignored; the longest matching name wins), or None."""
    text = re.sub(r"^\W*(feedback\s*:)?\s*", "", reply.strip(), flags=re.IGNORECASE).lower()
    for i in sorted(range(len(categories)), key=lambda i: -len(categories[i])):
        name = categories[i].lower()
        if text.startswith(name) and not text[len(name):len(name) + 1].isalnum():
            return i
    return None


@dataclass(frozen=True)
class Critique:
    analysis: str
    feedback: str
    score: int


_CRITIQUE = re.compile(r"analysis\s*:\s*(?P<analysis>.+?)\s*feedback\s*:\s*(?P<feedback>.+?)\s*"
                       r"score\s*:\s*(?P<score>\d+)(?:\s*/\s*3)?", re.IGNORECASE | re.DOTALL)


def parse_critique(reply: str) -> Critique | None:
    """Fig. 20's three fields (markdown bold tolerated); None unless all three are there, the feedback is one
    non-empty line and the score is 0-3."""
    m = _CRITIQUE.search(reply.replace("*", ""))
    if m is None:
        return None
    feedback = m["feedback"].strip().strip('"').strip()
    score = int(m["score"])
    if not feedback or "\n" in feedback or score not in CRITIQUE_SCORES:
        return None
    return Critique(m["analysis"].strip(), feedback, score)


class LLMFeedback:
    """Asks ``judge`` about every (prompt, response); unreadable replies give ``None`` and are counted."""

    def __init__(self, judge: Judge):
        self.judge = judge
        self.unreadable = 0
        self.unreadable_examples: list[str] = []

    def prompt(self, messages: Messages, response: str) -> str:
        raise NotImplementedError

    def read(self, reply: str) -> Annotation | None:
        raise NotImplementedError

    def annotate(self, prompts: Sequence[Messages], responses: Sequence[str]) -> list[Annotation | None]:
        asks = [(None, self.prompt(p, r)) for p, r in zip(prompts, responses)]
        many = getattr(self.judge, "judge_many", None)
        replies = many(asks) if many is not None else [self.judge(*a) for a in asks]
        out = []
        for reply in replies:
            annotation = self.read(reply)
            if annotation is None:
                self.unreadable += 1
                if len(self.unreadable_examples) < 3:
                    self.unreadable_examples.append(reply[:200])
            out.append(annotation)
        return out


class LLMCategories(LLMFeedback):
    """ALT_LMC: the judge names one of ``categories`` (best first) after ``category_prompt``."""

    def __init__(self, judge: Judge, categories: Sequence[str] = HH_CATEGORIES):
        if len(categories) < 2 or len(set(categories)) != len(categories):
            raise ValueError(f"LLM categories need at least two distinct names, got {list(categories)}")
        super().__init__(judge)
        self.labels = list(categories)

    def prompt(self, messages: Messages, response: str) -> str:
        return category_prompt(messages, response)

    def read(self, reply: str) -> Annotation | None:
        c = parse_category(reply, self.labels)
        return None if c is None else Annotation(self.labels[c], c)


class LLMCritique(LLMFeedback):
    """ALT_LMU: the judge's one-sentence feedback after ``critique_prompt``; category 3 − score."""

    labels = [f"score {s}" for s in CRITIQUE_SCORES]

    def prompt(self, messages: Messages, response: str) -> str:
        return critique_prompt(messages, response)

    def read(self, reply: str) -> Annotation | None:
        c = parse_critique(reply)
        return None if c is None else Annotation(c.feedback, CRITIQUE_SCORES.index(c.score), float(c.score))


class ExemplarPool:
    """Feedback texts seen per category (ALT_LMU: the score-3 sentences are the exemplars sampling conditions
    on from iteration 2), with their counts, in first-seen order; plain values for checkpoints."""

    def __init__(self) -> None:
        self.texts: dict[int, dict[str, int]] = {}

    def add(self, annotations: Sequence[Annotation | None]) -> None:
        for a in annotations:
            if a is not None:
                counts = self.texts.setdefault(a.category, {})
                counts[a.feedback] = counts.get(a.feedback, 0) + 1

    def __contains__(self, category: int) -> bool:
        return bool(self.texts.get(category))

    def most_frequent(self, category: int) -> str:
        """The category's most frequent text (ties: the first seen)."""
        counts = self.texts[category]
        return max(counts, key=lambda t: counts[t])  # max keeps the first of equal counts

    def draw(self, category: int, rng: random.Random) -> str:
        """A text of ``category`` drawn with probability proportional to how often it was given."""
        counts = self.texts[category]
        return rng.choices(list(counts), weights=list(counts.values()))[0]

    def state_dict(self) -> dict[str, Any]:
        return {str(c): dict(t) for c, t in self.texts.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.texts = {int(c): dict(t) for c, t in state.items()}


# ---- rejection sampling --------------------------------------------------------------------------------------
def balanced_selection(categories: Sequence[int], truncated: Sequence[bool], per_category: int,
                       rng: random.Random, prefer_complete: bool = True) -> list[int]:
    """Indices of one prompt's samples to train on: up to ``per_category`` drawn at random from each category
    present, complete generations first (a truncated one only where a category has too few complete ones;
    §3.2 and A.3, "2 for each quantile" / "2 generations for each feedback category"). Sorted."""
    if per_category < 1:
        raise ValueError(f"per_category must be >= 1, got {per_category}")
    picked: list[int] = []
    for c in sorted(set(categories)):
        rows = [i for i, ci in enumerate(categories) if ci == c]
        complete = [i for i in rows if not truncated[i] or not prefer_complete]
        cut = [i for i in rows if truncated[i] and prefer_complete]
        rng.shuffle(complete)
        rng.shuffle(cut)
        picked += (complete + cut)[:per_category]
    return sorted(picked)
