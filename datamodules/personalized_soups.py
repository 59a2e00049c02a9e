"""Personalized Soups / RLPHF (Jang et al. 2023): instruction prompts x preference combinations -> prompts.

Training prompts are GPT4-Alpaca style rows from any local JSON or JSONL file (the paper's 10k
``alpaca_gpt4_10k.json`` is not on the hub): ``instruction`` (required), ``input`` (may be empty),
``output`` (not used: the policy is trained on-policy against preference rewards).

Each row yields one ``prompt`` record per entry of ``preferences``; an entry is a combination code
(``"ABA"`` = P1A + P2B + P3A: one preference per dimension, Style may also be C or D), a ``+``-joined list
(``"P1A+P3B"``), or one symbol (``"P1A"``, as in P-Soups' per-preference policies). The default is the
paper's eight combinations AAA ... BBB. The user turn is ``"{instruction} {input} {preference prompts}"``
joined by single spaces (the authors' ``"{instruction} {input} {preference_prompt}"``, empty input left
out). ``source_id`` names the active preferences (``"P1A+P2B+P3A"``; ``"koala-41:P1A+P2B+P3A"`` for an
evaluation prompt), so reward code can tell which preferences a prompt asks for.

``PREFERENCE_PROMPTS_AS_PRINTED`` holds Table 4 and the two scaling preferences (§4) verbatim, with
their ``Generate/Choose`` and ``(that answers)`` alternatives. ``preference_prompt(symbol, verb)`` resolves
them: ``Generate …`` for the policy's prompt, ``Choose …`` for a judge. We read "(that answers)" as part of
the judge's wording only ("Choose a response that answers in an unfriendly manner.") and leave it out of
the policy's ("Generate a response in an unfriendly manner."), which is also the authors' code string.

``EVALUATION_PROMPTS`` are the evaluation prompts of Table 5 exactly as printed, typos included, by their
printed ID. Table 5 prints 49 prompts: ID 48 is missing from the paper, so there are 49, not 50. The
extracted table wraps cells that contain commas or quotes in double quotes and escapes ``$`` as ``\\$``
(a typesetting artefact); those wrappers and escapes are removed. With ``evaluation_prompts`` (default)
the validation, test and predict splits are these prompts x ``preferences``: the paper selects checkpoints
and evaluates on the same 50 (here 49) prompts.

Shipped sample (``data_files="sample"``): three hand-written rows in the GPT4-Alpaca schema, as train
(see ``datamodules/samples/PROVENANCE.md``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import datasets

from datamodules.base import HubOrFilesDataModule, optional_text, required_text
from zoo.records import PromptRecord, Record

# Table 4 (P1A-P3B) and the scaling experiment's Style additions (P3C, P3D), verbatim.
PREFERENCE_PROMPTS_AS_PRINTED = {
    "P1A": "Generate/Choose a response that can be easily understood by an elementary school student.",
    "P1B": "Generate/Choose a response that only a PhD Student in that specific field could understand.",
    "P2A": "Generate/Choose a response that is concise and to the point, without being verbose.",
    "P2B": "Generate/Choose a response that is very informative, without missing any background information.",
    "P3A": "Generate/Choose a response that is friendly, witty, funny, and humorous, like a close friend.",
    "P3B": "Generate/Choose a response (that answers) in an unfriendly manner.",
    "P3C": "Generate/Choose a response (that answers) in a sassy manner.",
    "P3D": "Generate/Choose a response (that answers) in a sarcastic manner.",
}
COMBINATIONS = ("AAA", "AAB", "ABA", "ABB", "BAA", "BAB", "BBA", "BBB")

# Table 5, "The full list of 50 prompts used for evaluation" (ID 48 is not printed).
EVALUATION_PROMPTS: dict[int, str] = {
    1: "Why can't bank use cash as capital as a buffer for potential losses?",
    2: "Can you tell my a story about nuclear physics?",
    3: "Create a message for an offer letter for an internship at Apple as a AI research intern.",
    4: "Explain sarcoidosis to me.",
    5: "Give me a sample 5 day itinary for a switzerland holiday, starting from Basel",
    6: "Explain The Death of Ivan Ilych",
    7: "Why is it that only proteins, carbohydrates and fats are deemed to have caloric value?",
    8: "Rank the following companies by how pro-consumer they are:Microsoft, Google, Nintendo, Sony, EA.",
    9: "I'm planning to visit Okinawa Japan from April 7th to April 10th. Do you have any recommendation on what to do while I'm there?",
    10: "How to improve instance segmentation AP metrics with human knowledge?",
    11: "What is needed for self-sufficient living spaces?",
    12: "Expand on the relation between inconsistency and ideological thinking.",
    13: "Why do people give Reddit Gold to admins?",
    14: "What does Nassim Nicholas Taleb say about market efficiency?",
    15: "Can a boy and girl be just be best friends only ever?",
    16: "What would be the reason for the popularity of youtube compared to other video sharing websites?",
    17: 'Do you know something about the book "the art of thinking clearly" wrote by Rolf Dobelli?',
    18: "Antennas that transmit an equal amount of energy in the horizontal direction are called",
    19: "Hi, I have a question about MFCC (mel frequency cepstral coefficients). Are they the same thing as a MEL-spectrogram, or is there a difference?",
    20: "Why is it a bad idea to give a mouse a cookie?",
    21: "How can anti-deressants make people think or act suicidally?",
    22: "Create a lesson plan in two different levels: in CEFR A1 and A2 on the topic of friendship. Add a rubric.",
    23: "Is online casino legal in India?",
    24: "How much of a threat is climate change in the coming years, and what should we do to stop it?",
    25: "Explain the basics of area and perimeter",
    26: "What are the possible performance issues in a learning program on cross cultural communication?",
    27: "Write description for 925 sterling silver miami cuban link chain.",
    28: "What if people only valued and took pride in the things that were true about themselves?",
    29: "I need to learn English could you help me and make a exercise?",
    30: "Why does warmth make you feel tired?",
    31: "Explain to me the Finite Element Method.",
    32: 'Introduce the "financial markets and institutions" by Frederic S. Mishkin',
    33: "When are hops added to the brewing process?",
    34: "Can a Liebherr LTM 11200-9.1 hypothetically lift Mount everest?",
    35: "What are five important topics for game design?",
    36: "What language does argentina people speak?",
    37: "Is queue an ADT or a data structure?",
    38: "What are some basics of nutrition that i should be aware of?",
    39: "Can a qualifying manager work remotely abroad for US employer for an year be eligible for Eb1-C while on h1-b?",
    40: "I have competencies in remote sensing, machine learning, and water resource knowledge, what are the possible jobs I can occupy? What are the possible projects I can do? What companies I can work at?",
    41: "Is a banana a fruit or a herb",
    42: "What are african governments doing to improve air traffic connectivity?",
    43: "I want to open the developer tools in chrome with ctrl + shift + i on this website: https://mnsw.pro/ It doesnt work. works on other websites. even here. what is wrong?",
    44: "Consider this situation. Customer is ready to pay $13 for my product but we are not able to raise invoice for less than $20. So in this situation, act like a top sales person; closing expert; give me an email copy to upsell this customer with another $13 product so that it can create a win win situation.",
    45: "What are the important points for brand promotion and brand marketing?",
    46: "What niches are not being fulfilled on the YouTube platform?",
    47: "Explain TypeScript and Duck Typing.",
    49: "How are carbon fibers used in buildings?",
    50: "List the layers of the TCP/IP model and for each layer identify one protocol.",
}


def preference_prompt(symbol: str, verb: str = "Generate") -> str:
    """The printed preference prompt of ``symbol`` in the policy's (``Generate``) or judge's (``Choose``) wording."""
    if symbol not in PREFERENCE_PROMPTS_AS_PRINTED:
        raise ValueError(f"unknown preference {symbol!r}; known: {tuple(PREFERENCE_PROMPTS_AS_PRINTED)}")
    if verb not in ("Generate", "Choose"):
        raise ValueError(f"verb must be 'Generate' or 'Choose', got {verb!r}")
    text = PREFERENCE_PROMPTS_AS_PRINTED[symbol].replace("Generate/Choose", verb)
    return text.replace(" (that answers)", " that answers" if verb == "Choose" else "")


def parse_preferences(code: str) -> tuple[str, ...]:
    """``"ABA"`` -> ("P1A", "P2B", "P3A"); ``"P1A+P3B"`` -> ("P1A", "P3B"); ``"P2B"`` -> ("P2B",)."""
    if code.startswith("P"):
        symbols = tuple(code.split("+"))
    elif len(code) == 3:
        symbols = tuple(f"P{dimension}{letter}" for dimension, letter in enumerate(code, start=1))
    else:
        symbols = (code,)
    for s in symbols:
        if s not in PREFERENCE_PROMPTS_AS_PRINTED:
            raise ValueError(
                f"preference {code!r}: unknown {s!r}; known: {tuple(PREFERENCE_PROMPTS_AS_PRINTED)}"
            )
    dimensions = [s[:2] for s in symbols]
    if len(set(dimensions)) < len(dimensions):
        raise ValueError(f"preference {code!r} names two preferences of one dimension")
    return symbols


class PersonalizedSoupsDataModule(HubOrFilesDataModule):
    """Personalized Soups ``prompt`` records: instructions x preference combinations.

    Args:
        data_files: local GPT4-Alpaca JSON/JSONL files per split (``instruction``, ``input``, ``output``).
            ``"sample"`` uses the shipped hand-written rows.
        preferences: combination codes (``"ABA"``), ``+``-joined symbols or single symbols; default the
            paper's eight combinations.
        evaluation_prompts: validation/test/predict are the paper's printed evaluation prompts.
        (see ``RecordDataModule`` for the shared arguments)
    """

    record_kinds: ClassVar[tuple[str, ...]] = ("prompt",)
    sample_files: ClassVar[dict[str, Any]] = {"train": ["personalized_soups/alpaca_gpt4.handwritten.jsonl"]}

    def __init__(
        self,
        data_files: dict[str, list[str] | str] | str | None = None,
        preferences: list[str] | None = None,
        evaluation_prompts: bool = True,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.preferences = list(preferences) if preferences is not None else list(COMBINATIONS)
        if not self.preferences:
            raise ValueError("data.preferences is empty")
        for code in self.preferences:
            parse_preferences(code)
        self.data_files = self.local_files(data_files)
        self.evaluation_prompts = evaluation_prompts

    # --- raw rows: local files, and the paper's evaluation prompts (no hub) -----------------------
    def hub_splits(self) -> dict[str, str]:
        return {}

    def hub_name(self, hub_split: str) -> str:
        return ""  # no hub: a split without files names no source

    def missing_split(self, split: str) -> str:
        return (
            f"Personalized Soups: no {split!r} split: the training prompts are local files; "
            f"give data.data_files.{split}"
        )

    def _from_paper(self, split: str) -> bool:
        return self.evaluation_prompts and split != "train"

    def _has(self, split: str) -> bool:
        return self._from_paper(split) or super()._has(split)

    def _load(self, split: str) -> datasets.Dataset:
        if self._from_paper(split):
            rows = [
                {"koala_id": i, "instruction": text, "input": ""} for i, text in EVALUATION_PROMPTS.items()
            ]
            return datasets.Dataset.from_list(rows)
        return datasets.load_dataset("json", data_files=self.data_files[split], split="train")

    def load_split(self, split: str) -> datasets.Dataset:
        if split != "train" and not self._has(split) and not self._has("train"):
            raise ValueError(self.missing_split(split))  # no local train files to hold a part out of
        return super().load_split(split)

    def source_name(self, split: str) -> str:
        if self._from_paper(split):
            return "Personalized Soups paper, Table 5 (evaluation prompts)"
        return super().source_name(split)

    def record_options(self) -> dict[str, Any]:
        return {"preferences": self.preferences}

    # --- rows -> records -------------------------------------------------------------------------
    @staticmethod
    def to_records(
        row: dict[str, Any], kind: str, preferences: tuple[str, ...] | list[str] = COMBINATIONS
    ) -> list[Record]:
        instruction = required_text(row.get("instruction"), "instruction")
        extra = optional_text(row.get("input"), "input")  # GPT4-Alpaca leaves it empty for most rows
        task = f"{instruction} {extra}" if extra else instruction
        where = f"koala-{row['koala_id']}:" if row.get("koala_id") is not None else ""
        records: list[Record] = []
        for code in preferences:
            symbols = parse_preferences(code)
            text = " ".join([task, *(preference_prompt(s) for s in symbols)])
            records.append(PromptRecord(prompt=text, source_id=where + "+".join(symbols)))
        return records
