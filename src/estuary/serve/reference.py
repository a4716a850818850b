"""The reference engine: plain transformers (+ peft for adapters), same interface as the vLLM engine.

It is the correctness reference for top-k log-probabilities and the baseline of the throughput benchmark;
the server never falls back to it silently (`engine: reference` must be asked for). Work runs on one thread
under a lock; each `stream` call is processed in padded batches of `reference_batch_size` sequences.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import nullcontext
from typing import Any

from estuary.serve.adapters import AdapterVersion
from estuary.serve.engine import Engine, use_cpu_threads
from estuary.serve.types import Completion, GenerationParams, InvalidRequest, PositionTopK, Sample, TextTopK


class ReferenceEngine(Engine):
    name = "reference"

    model: Any

    async def start(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        self.threads = use_cpu_threads(self.config)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.device = "cuda" if self.config.on_gpu and torch.cuda.is_available() else "cpu"
        self.base = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtypes[self.dtype])
        self.base.to(torch.device(self.device))  # type: ignore[arg-type]
        self.base.eval()
        self.model = self.base
        self._adapters: dict[str, str] = {}  # version id -> peft adapter name
        self._lock = threading.Lock()
        self._pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.eos_token_id
        limit = getattr(self.base.config, "max_position_embeddings", 0) or 0
        self.max_model_len = min(x for x in (self.config.max_model_len, limit) if x) if (
            self.config.max_model_len or limit) else 0

    # -- adapters ----------------------------------------------------------------------------------
    async def load_adapter(self, version: AdapterVersion) -> None:
        await asyncio.to_thread(self._load_adapter, version)

    def _load_adapter(self, version: AdapterVersion) -> None:
        from peft import PeftModel

        with self._lock:
            if version.id in self._adapters:
                return
            peft_name = f"v{len(self._adapters)}"  # peft names become module keys: no '@' or '.'
            try:
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(version.path, adapter_name=peft_name)
                else:
                    self.model = PeftModel.from_pretrained(self.base, version.path, adapter_name=peft_name)
                    self.model.eval()
            except Exception as exc:
                raise InvalidRequest(f"adapter {version.id} could not be loaded: {exc}") from None
            self._adapters[version.id] = peft_name

    def _adapter_scope(self, adapter: AdapterVersion | None) -> Any:
        if adapter is None:
            return self.model.disable_adapter() if self._adapters else nullcontext()
        if adapter.id not in self._adapters:
            raise InvalidRequest(f"adapter {adapter.id} is not loaded")
        self.model.set_adapter(self._adapters[adapter.id])
        return nullcontext()

    # -- generation --------------------------------------------------------------------------------
    async def stream(self, prompts: Sequence[list[int]], params: GenerationParams,
                     adapter: AdapterVersion | None) -> AsyncIterator[Completion]:
        self.check_lengths(prompts, params.max_tokens)
        size = max(1, self.config.reference_batch_size // params.n)
        for start in range(0, len(prompts), size):
            batch = list(prompts[start:start + size])
            for c in await asyncio.to_thread(self._generate, batch, start, params, adapter):
                yield c

    def _generate(self, batch: list[list[int]], offset: int, params: GenerationParams,
                  adapter: AdapterVersion | None) -> list[Completion]:
        import torch

        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):  # left padding for decoder-only generation
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            mask[row, width - len(ids):] = 1
        sample = params.temperature > 0
        copies = params.n if sample else 1  # greedy samples are identical: generate once, repeat
        kwargs: dict[str, Any] = dict(
            max_new_tokens=params.max_tokens, do_sample=sample, num_return_sequences=copies,
            pad_token_id=self._pad, attention_mask=mask.to(self.device),
        )
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.ignore_eos:
            kwargs["min_new_tokens"] = params.max_tokens
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        eos = self._eos_ids()
        with self._lock, torch.inference_mode(), torch.random.fork_rng(devices=[]):
            if params.seed is not None:
                torch.manual_seed(params.for_prompt(offset).seed)  # batches of one call draw different streams
            with self._adapter_scope(adapter):
                out = self.model.generate(input_ids=input_ids.to(self.device), **kwargs)
        new = out[:, width:].tolist()
        completions = []
        for row, ids in enumerate(batch):
            samples = [self._sample(list(new[row * copies + (j % copies)]), params, eos) for j in range(params.n)]
            completions.append(Completion(index=offset + row, prompt_tokens=len(ids), samples=samples,
                                          adapter=adapter.id if adapter else None))
        return completions

    def _eos_ids(self) -> set[int]:
        eos = self.base.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def _sample(self, tokens: list[int], params: GenerationParams, eos: set[int]) -> Sample:
        reason = "length"
        if not params.ignore_eos:
            for i, t in enumerate(tokens):
                if t in eos:
                    tokens, reason = tokens[:i], "stop"  # like vLLM: the EOS token is not part of the output
                    break
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for s in params.stop:
            cut = text.find(s)
            if cut >= 0:
                text, reason = text[:cut], "stop"
        return Sample(text=text, token_ids=tokens, finish_reason=reason)

    # -- top-k -------------------------------------------------------------------------------------
    async def topk(self, texts: Sequence[list[int]], k: int, adapter: AdapterVersion | None) -> list[TextTopK]:
        self.check_lengths(texts, 1, "text")
        return await asyncio.to_thread(self._topk, list(texts), k, adapter)

    def _topk(self, texts: list[list[int]], k: int, adapter: AdapterVersion | None) -> list[TextTopK]:
        import torch

        results = []
        with self._lock, torch.inference_mode(), self._adapter_scope(adapter):
            for ids in texts:  # one text at a time: [len, vocab] float32 log-probs stay small
                logits = self.model(input_ids=torch.tensor([ids], device=self.device)).logits[0]
                logp = torch.log_softmax(logits.float(), dim=-1)
                top = torch.topk(logp, k, dim=-1)
                nxt = torch.tensor(ids[1:], device=self.device)
                token_lps = logp[torch.arange(len(ids) - 1), nxt].tolist() if len(ids) > 1 else []
                top_ids, top_lps = top.indices.tolist(), top.values.tolist()
                results.append(TextTopK(
                    text=self.tokenizer.decode(ids), token_ids=list(ids), tokens=self.token_strings(ids),
                    token_logprobs=[None, *token_lps],
                    topk=[PositionTopK(ids=i, tokens=self.token_strings(i), logprobs=lp)
                          for i, lp in zip(top_ids, top_lps, strict=True)],
                ))
        return results
