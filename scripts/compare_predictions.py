"""Compare two ``predict`` JSONL files (ours vs a baseline) the way the MEET paper does (``zoo.judge``).

    python scripts/compare_predictions.py runs/meet/predictions.jsonl runs/coh/predictions.jsonl \\
        --reward-model OpenAssistant/reward-model-deberta-v3-large-v2 [--llm-judge PATH --judge-kind dialogue] \\
        [--references refs.jsonl] [--out report.json]

The LLM judge is a local chat model (``--llm-judge PATH``) or any OpenAI-compatible endpoint (``--judge-api
MODEL [--judge-base-url URL] [--judge-cache judge.jsonl]``; key from ``OPENAI_API_KEY``; ``zoo.judge_client``:
concurrent requests, retries, and a cache, so a re-run makes no requests).

Prints and writes a JSON report: win/lose/tie rates and Δ per judge (reward model: tie band
σ(r_ours − r_theirs) ∈ [0.45, 0.55]; LLM judge: both orders, combined by the paper's rule) and, with
``--references`` (JSONL with a ``reference`` field, matched by ``idx`` or else by line order), ROUGE-L and
ROUGE-Avg of both files. Prompts are matched by ``idx`` and must be the same in both files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.judge import (  # noqa: E402
    TIE_BAND,
    hf_chat_judge,
    judge_both_orders,
    paired_predictions,
    reward_outcomes,
    reward_scores,
    rouge,
    win_rates,
)


def read_references(path: str) -> dict[int, str]:
    refs = {}
    for n, line in enumerate(x for x in Path(path).read_text().splitlines() if x.strip()):
        row = json.loads(line)
        refs[int(row.get("idx", n))] = row["reference"]
    return refs


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ours")
    p.add_argument("theirs")
    p.add_argument("--reward-model", help="sequence-classification reward model (hub id or directory)")
    p.add_argument("--tie-band", nargs=2, type=float, default=list(TIE_BAND))
    p.add_argument("--llm-judge", help="a local chat model directory/hub id used as the pairwise judge")
    p.add_argument("--judge-api", metavar="MODEL", help="an OpenAI-compatible chat model as the pairwise judge")
    p.add_argument("--judge-base-url", help="its endpoint (default: OpenAI's), e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--judge-cache", help="JSON Lines cache of the API judge's replies")
    p.add_argument("--judge-concurrency", type=int, default=8)
    p.add_argument("--judge-kind", choices=["dialogue", "summary"], default="dialogue")
    p.add_argument("--judge-limit", type=int, default=128, help="pairs for the LLM judge (the paper: 128)")
    p.add_argument("--references", help="JSONL with 'reference' (and 'idx') per line, for ROUGE")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", help="write the report here as JSON")
    args = p.parse_args(argv)

    pairs = paired_predictions(args.ours, args.theirs)
    report: dict = {"ours": args.ours, "theirs": args.theirs, "pairs": len(pairs)}
    if args.reward_model:
        prompts = [q for _, q, _, _ in pairs]
        r_ours = reward_scores(args.reward_model, prompts, [a for *_, a, _ in pairs], args.batch_size)
        r_theirs = reward_scores(args.reward_model, prompts, [b for *_, b in pairs], args.batch_size)
        outcomes = reward_outcomes(r_ours, r_theirs, tuple(args.tie_band))
        report["reward_model"] = {"model": args.reward_model, "tie_band": args.tie_band,
                                  **win_rates(outcomes).as_dict(),
                                  "mean_reward_ours": float(r_ours.mean()), "mean_reward_theirs": float(r_theirs.mean())}
    if args.llm_judge and args.judge_api:
        raise SystemExit("--llm-judge and --judge-api: choose one judge")
    if args.llm_judge:
        judge = hf_chat_judge(args.llm_judge)
        results = [judge_both_orders(judge, args.judge_kind, q, a, b) for _, q, a, b in pairs[: args.judge_limit]]
        unreadable = sum(v is None for _, verdicts in results for v in verdicts)
        report["llm_judge"] = {"model": args.llm_judge, "kind": args.judge_kind,
                               **win_rates([o for o, _ in results]).as_dict(), "unreadable_verdicts": unreadable}
    if args.judge_api:
        from functools import partial

        from zoo.judge import parse_verdict
        from zoo.judge_client import OpenAIJudge, judge_pairs

        api = OpenAIJudge(args.judge_api, base_url=args.judge_base_url, cache_path=args.judge_cache,
                          concurrency=args.judge_concurrency, parser=partial(parse_verdict, args.judge_kind))
        results = judge_pairs(api, args.judge_kind, [(q, a, b) for _, q, a, b in pairs[: args.judge_limit]])
        unreadable = sum(v is None for _, verdicts in results for v in verdicts)
        report["llm_judge"] = {"model": args.judge_api, "kind": args.judge_kind,
                               **win_rates([o for o, _ in results]).as_dict(), "unreadable_verdicts": unreadable,
                               "client": api.summary()}
    if args.references:
        refs = read_references(args.references)
        missing = [i for i, *_ in pairs if i not in refs]
        if missing:
            raise SystemExit(f"--references has no reference for idx {missing[:5]}")
        report["rouge_ours"] = rouge([a for *_, a, _ in pairs], [refs[i] for i, *_ in pairs])
        report["rouge_theirs"] = rouge([b for *_, b in pairs], [refs[i] for i, *_ in pairs])
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
