"""Pairwise evaluation of two systems' predictions: reward-model judge, LLM judge (both orders), ROUGE.

The protocol of Xue et al. (arXiv 2310.00819, §4.3 and Appendix C), usable for any method:

- **Reward model** (the paper: OpenAssistant/reward-model-deberta-v3-large-v2): each prompt's two responses
  get rewards r₁ (ours) and r₂ (theirs); the pair is a *tie* when σ(r₁ − r₂) ∈ [0.45, 0.55] (inclusive),
  a *win* above the band and a *loss* below it. Δ = win rate − lose rate.
- **LLM judge** (the paper: GPT-4): every pair is judged twice, ours first then ours second, to cancel
  position bias; the two verdicts combine as: win = two wins or a win and a draw; loss = two losses or a
  loss and a draw; tie = two draws or a win and a loss. Prompts: Rafailov et al.'s summary prompt (no draw option)
  and the MT-bench pairwise prompt (``[[A]]``/``[[B]]``/``[[C]]``). The judge is any function
  ``(system, user) -> text`` (a local HF chat model here, an API client elsewhere); an unreadable verdict
  counts as a draw and is counted.
- **ROUGE** against reference summaries (``torchmetrics.text.rouge.ROUGEScore``): ROUGE-L F1 and the mean
  of the ROUGE-1/2/L F1 scores as "Rouge-Avg" (the paper does not define it), in percent. No stemming:
  torchmetrics needs ``nltk`` for the stemmer and ``rougeLsum``, which this stack does not install; plain
  ROUGE-1/2/L run offline without it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

Outcome = Literal["win", "lose", "tie"]
Verdict = Literal["A", "B", "C"]  # C: draw
TIE_BAND = (0.45, 0.55)


# ---- outcomes and rates -------------------------------------------------------------------------------
def reward_outcomes(ours: Sequence[float] | torch.Tensor, theirs: Sequence[float] | torch.Tensor,
                    tie_band: tuple[float, float] = TIE_BAND) -> list[Outcome]:
    """win / lose / tie per pair from rewards: tie when σ(r_ours − r_theirs) lies in ``tie_band`` (inclusive)."""
    p = torch.sigmoid(torch.as_tensor(ours, dtype=torch.float64) - torch.as_tensor(theirs, dtype=torch.float64))
    lo, hi = tie_band
    return ["tie" if lo <= q <= hi else ("win" if q > hi else "lose") for q in p.tolist()]


@dataclass
class WinRates:
    """Rates in percent over ``n`` pairs; ``delta`` = win − lose (> 0: ours is better)."""

    win: float
    lose: float
    tie: float
    delta: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def win_rates(outcomes: Sequence[Outcome]) -> WinRates:
    n = len(outcomes)
    if n == 0:
        raise ValueError("no outcomes to rate")
    rate = {k: 100.0 * sum(o == k for o in outcomes) / n for k in ("win", "lose", "tie")}
    return WinRates(rate["win"], rate["lose"], rate["tie"], rate["win"] - rate["lose"], n)


def combine_orders(first: Outcome, second: Outcome) -> Outcome:
    """Both-order rule (paper, Appendix C), each argument already from our side: two wins or win + draw ->
    win; two losses or loss + draw -> lose; two draws or win + loss -> tie."""
    pair = {first, second}
    if pair <= {"win", "tie"} and "win" in pair:
        return "win"
    if pair <= {"lose", "tie"} and "lose" in pair:
        return "lose"
    return "tie"


# ---- LLM judge ----------------------------------------------------------------------------------------
SUMMARY_PROMPT = (
    "Which of the following summaries does a better job of summarizing the most important points in the given "
    "forum post, without including unimportant or irrelevant details? A good summary is both precise and "
    "concise.\n\nPost:\n{question}\n\nSummary A:\n{answer_a}\n\nSummary B:\n{answer_b}\n\nFIRST provide a "
    "one-sentence comparison of the two summaries, explaining which you prefer and why. SECOND, on a new line, "
    'state only "A" or "B" to indicate your choice. Your response should use the format:\nComparison: '
    '<one-sentence comparison and explanation>\nPreferred: <"A" or "B">'
)
DIALOGUE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
    "to the user question displayed below. You should choose the assistant that follows the user's instructions "
    "and answers the user's question better. Your evaluation should consider factors such as the helpfulness, "
    "relevance, accuracy, depth, creativity, and level of detail of their responses. Begin your evaluation by "
    "comparing the two responses and provide a short explanation. Avoid any positional biases and ensure that "
    "the order in which the responses were presented does not influence your decision. Do not allow the length "
    "of the responses to influence your evaluation. Do not favor certain names of the assistants. Be as "
    "objective as possible. After providing your explanation, output your final verdict by strictly following "
    'this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.'
)
DIALOGUE_PROMPT = (
    "[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's "
    "Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)
JudgeKind = Literal["dialogue", "summary"]
Judge = Callable[[str | None, str], str]  # (system prompt or None, user prompt) -> the judge's text


def judge_prompt(kind: JudgeKind, question: str, answer_a: str, answer_b: str) -> tuple[str | None, str]:
    """(system, user) for one ordering."""
    if kind == "summary":
        return None, SUMMARY_PROMPT.format(question=question, answer_a=answer_a, answer_b=answer_b)
    if kind == "dialogue":
        return DIALOGUE_SYSTEM, DIALOGUE_PROMPT.format(question=question, answer_a=answer_a, answer_b=answer_b)
    raise ValueError(f"judge kind must be dialogue or summary, got {kind!r}")


def parse_verdict(kind: JudgeKind, text: str) -> Verdict | None:
    """The judge's choice: ``Preferred: A|B`` (summary) or the last ``[[A]]``/``[[B]]``/``[[C]]`` (dialogue)."""
    if kind == "summary":
        found = re.findall(r"Preferred:\s*\"?([AB])\b", text)
    else:
        found = re.findall(r"\[\[([ABC])\]\]", text)
    return found[-1] if found else None


def verdict_outcome(verdict: Verdict | None, ours: Literal["A", "B"]) -> Outcome:
    if verdict is None or verdict == "C":
        return "tie"
    return "win" if verdict == ours else "lose"


def judge_both_orders(judge: Judge, kind: JudgeKind, question: str, ours: str, theirs: str
                      ) -> tuple[Outcome, list[Verdict | None]]:
    """(combined outcome, the two raw verdicts): ours as A, then ours as B."""
    first = parse_verdict(kind, judge(*judge_prompt(kind, question, ours, theirs)))
    second = parse_verdict(kind, judge(*judge_prompt(kind, question, theirs, ours)))
    return combine_orders(verdict_outcome(first, "A"), verdict_outcome(second, "B")), [first, second]


def hf_chat_judge(name_or_path: str, max_new_tokens: int = 256, device: str | None = None) -> Judge:
    """A local chat model as judge (greedy). The paper used GPT-4; wrap an API client the same way."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path).eval()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)

    @torch.no_grad()
    def judge(system: str | None, user: str) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ids = {k: v.to(device) for k, v in ids.items()}
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id or tok.eos_token_id)
        return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

    return judge


# ---- reward model -------------------------------------------------------------------------------------
@torch.no_grad()
def reward_scores(name_or_path: str, questions: Sequence[str], answers: Sequence[str], batch_size: int = 8,
                  max_length: int = 1024, device: str | None = None) -> torch.Tensor:
    """Scalar rewards [N] from a sequence-classification reward model scoring (question, answer) text pairs
    (the OpenAssistant DeBERTa models' interface)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(name_or_path).eval()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    out = []
    for i in range(0, len(questions), batch_size):
        enc = tok(list(questions[i : i + batch_size]), list(answers[i : i + batch_size]), padding=True,
                  truncation=True, max_length=max_length, return_tensors="pt").to(device)
        out.append(model(**enc).logits[:, 0].float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


# ---- ROUGE --------------------------------------------------------------------------------------------
def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L F1 (percent, corpus mean) and ``rouge_avg``, their mean."""
    from torchmetrics.text.rouge import ROUGEScore

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    scores = ROUGEScore(rouge_keys=("rouge1", "rouge2", "rougeL"))(list(predictions), list(references))
    out = {k: 100.0 * float(scores[f"{k}_fmeasure"]) for k in ("rouge1", "rouge2", "rougeL")}
    out["rouge_avg"] = sum(out.values()) / 3
    return out


# ---- prediction files ---------------------------------------------------------------------------------
def read_predictions(path: str | Path) -> dict[int, dict]:
    """A ``predict`` JSONL file as {idx: row}, the first sample of each prompt."""
    rows: dict[int, dict] = {}
    for n, line in enumerate(Path(path).read_text().splitlines()):
        if line.strip():
            row = json.loads(line)
            if row.get("sample", 0) == 0:
                rows.setdefault(int(row.get("idx", n)), row)
    return rows


def paired_predictions(ours: str | Path, theirs: str | Path) -> list[tuple[int, str, str, str]]:
    """(idx, prompt, our completion, their completion) for every prompt in both files; the prompts must agree."""
    a, b = read_predictions(ours), read_predictions(theirs)
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError(f"{ours} and {theirs} share no prompt (idx)")
    for i in common:
        if a[i].get("prompt") != b[i].get("prompt"):
            raise ValueError(f"idx {i}: the two files have different prompts; were they made from the same data?")
    return [(i, a[i].get("prompt", ""), a[i]["completion"], b[i]["completion"]) for i in common]
