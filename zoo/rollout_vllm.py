"""vLLM behind the rollout engine's interface, for GPU users (optional extra ``[vllm]``).

UNTESTED IN THIS REPOSITORY: the development machines have no GPU and no ``vllm``. ``vllm`` is imported only
when a ``VLLMEngine`` is built, and ``tests/zoo/test_rollout.py::test_vllm_sync_weights_matches_policy``
checks weight sync where vllm and CUDA exist; everywhere else it is skipped with its reason.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from zoo.rollout import (
    Completion,
    Rollout,
    SamplingSettings,
    Timing,
    check_settings,
    sample_seed,
    token_budgets,
)


class VLLMEngine:
    """vLLM behind ``zoo.rollout``'s interface, colocated with the policy on the training GPU. UNTESTED HERE
    (``pip install steerzoo[vllm]`` on a CUDA machine; see the module docstring).

    After each optimizer phase call ``sync_weights(policy)``: full weights are loaded into vLLM's model in place
    (as TRL's colocated GRPO and OpenRLHF do); under LoRA only the adapter tensors are written to a directory
    and served as a new ``LoRARequest`` (pass the PeftModel). Log-probs are vLLM's ``processed_logprobs`` (after temperature), which
    equal ``Completion.logprobs``' definition only without top-k/top-p, so truncated sampling is refused.
    Seeds are vLLM's per-request seeds (reproducible in vLLM, not equal to the lean engine's draws); the
    prefill/decode split is not reported (``prefill_s`` is NaN, ``decode_s`` the whole call)."""

    def __init__(self, model_path: str, tokenizer: PreTrainedTokenizerBase, lora: bool = False, **llm_kwargs):
        import vllm  # the optional extra; imported only here

        llm_kwargs.setdefault("gpu_memory_utilization", 0.3)  # colocated: leave the rest to training
        llm_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        if lora:
            llm_kwargs.setdefault("enable_lora", True)
        self.vllm, self.tokenizer, self.lora = vllm, tokenizer, lora
        self.llm = vllm.LLM(model=model_path, **llm_kwargs)
        self.lora_request, self._lora_dir = None, None

    def generate(self, prompt_ids: Sequence[Sequence[int]], settings: SamplingSettings) -> Rollout:
        check_settings(settings)
        budgets = token_budgets(prompt_ids, settings)
        if settings.top_p < 1 or settings.top_k:
            raise ValueError("VLLMEngine: vLLM's log-probs are taken after top-k/top-p truncation, not the "
                             "log_softmax(logits / T) that Completion.logprobs promises; sample without them")
        params = [self.vllm.SamplingParams(
            n=settings.n, temperature=settings.temperature, max_tokens=budget, logprobs=0, stop=settings.stop,
            seed=None if settings.seed is None else sample_seed(settings.seed, i, 0) % 2**31)
            for i, budget in enumerate(budgets)]
        t0 = time.perf_counter()
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompt_ids], params,
                                    lora_request=self.lora_request, use_tqdm=False)
        timing = Timing(prefill_s=float("nan"), decode_s=time.perf_counter() - t0)
        completions = []
        for i, out in enumerate(outputs):
            for j, o in enumerate(out.outputs):
                reason = "length" if o.finish_reason == "length" else "stop" if isinstance(o.stop_reason, str) else "eos"
                logps = [lp[t].logprob for t, lp in zip(o.token_ids, o.logprobs)]
                completions.append(Completion(i, j, list(o.token_ids), o.text, logps, reason))
                timing.generated_tokens += len(o.token_ids)
        return Rollout(completions=completions, n=settings.n, timing=timing)

    def sync_weights(self, policy: nn.Module | dict[str, torch.Tensor]) -> None:
        """Push the policy's current weights into vLLM (full state dict, or LoRA adapter files)."""
        if self.lora:
            import tempfile

            from vllm.lora.request import LoRARequest

            self._lora_dir = self._lora_dir or tempfile.mkdtemp(prefix="steerzoo_vllm_lora_")
            policy.save_pretrained(self._lora_dir)  # a PeftModel: adapter_config.json + adapter tensors only
            version = 1 if self.lora_request is None else self.lora_request.lora_int_id + 1
            self.lora_request = LoRARequest(f"policy-{version}", version, self._lora_dir)
            return
        state = policy if isinstance(policy, dict) else policy.state_dict()
        worker = self.llm.llm_engine.model_executor.driver_worker
        runner = getattr(worker, "worker", worker).model_runner  # V1 wraps the worker once more
        runner.model.load_weights(weights=list(state.items()))
        self.llm.reset_prefix_cache()  # cached prompt K/V belong to the old weights

    def score(self, token_ids: Sequence[int]) -> list[float]:
        """log p(token_t | tokens_<t) for t >= 1 under vLLM's current weights (prompt log-probs, T = 1)."""
        params = self.vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
        out = self.llm.generate([{"prompt_token_ids": list(token_ids)}], params, lora_request=self.lora_request,
                                use_tqdm=False)[0]
        return [lp[t].logprob for t, lp in zip(token_ids[1:], out.prompt_logprobs[1:])]
