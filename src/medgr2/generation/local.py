"""Local generators: a transformers VLM (``HFBackend``) and vLLM (``VLLMBackend``, optional).

Both use the same chat turn as every other stage: one user message with the image and the prompt text.
The local model is also what the paper's "self-updating generator" means in practice: a VLM fine-tuned on
high-reward items (Algorithm 1) is generated from through ``HFBackend``/``VLLMBackend``.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from medgr2.generation._util import image_bytes, to_pil
from medgr2.generation.backends import GenRequest, GenResult
from medgr2.generation.prompts import to_json_schema
from medgr2.utils.optional import VLLM_HINT, VLLMNotInstalledError

logger = logging.getLogger(__name__)


def _messages(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


class HFBackend:
    """A transformers VLM generating in batches (left padding, only the new tokens decoded).

    Works with any model/processor pair that follows the generic VLM API: ``processor.apply_chat_template``
    with ``{"type": "image"}`` placeholders, ``processor(text=[...], images=[...])`` and
    ``model.generate``. The torch RNG is seeded from each batch's first request so sampled outputs are
    reproducible for a fixed batching. A failed batch is retried one request at a time so one bad image
    costs one result, not the batch.
    """

    name = "hf"

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        max_new_tokens: int = 384,
        do_sample: bool = True,
        temperature: float = 1.0,
        top_p: float | None = None,
        batch_size: int = 8,
        model_name: str | None = None,
        **generate_kwargs: Any,
    ):
        self._model = model
        self._processor = processor
        self.max_new_tokens = int(max_new_tokens)
        self.do_sample = bool(do_sample)
        self.temperature = float(temperature)
        self.top_p = top_p
        self.batch_size = max(1, int(batch_size))
        self.generate_kwargs = generate_kwargs
        config = getattr(model, "config", None)
        self.model = (
            model_name
            or getattr(model, "name_or_path", None)
            or getattr(config, "_name_or_path", None)
            or type(model).__name__
        )

    def __repr__(self) -> str:
        return f"HFBackend(model={self.model!r}, batch_size={self.batch_size}, do_sample={self.do_sample})"

    def decoding(self) -> dict[str, Any]:
        """The effective decoding settings passed to ``generate()`` (all explicit)."""
        from medgr2.models.decoding import GREEDY, sampling

        return sampling(self.temperature, self.top_p) if self.do_sample else dict(GREEDY)

    def fingerprint(self) -> dict[str, Any]:
        """Settings that change outputs."""
        return {
            "name": self.name,
            "model": str(self.model),
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "batch_size": self.batch_size,
            "generate_kwargs": {k: repr(v) for k, v in sorted(self.generate_kwargs.items())},
        }

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Generate for all requests, ``batch_size`` at a time; one result per request, in order."""
        results: list[GenResult] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            try:
                texts = self._generate_batch(chunk)
                results.extend(GenResult(key=r.key, text=t) for r, t in zip(chunk, texts, strict=True))
            except Exception as exc:
                logger.warning(
                    "hf: batch of %d failed (%s: %s); retrying one by one",
                    len(chunk),
                    type(exc).__name__,
                    exc,
                )
                for req in chunk:
                    try:
                        results.append(GenResult(key=req.key, text=self._generate_batch([req])[0]))
                    except Exception as one_exc:
                        results.append(
                            GenResult(
                                key=req.key,
                                error="exception",
                                detail=f"{type(one_exc).__name__}: {one_exc}"[:500],
                            )
                        )
        return results

    def _generate_batch(self, requests: list[GenRequest]) -> list[str]:
        import torch

        proc = self._processor
        tokenizer = getattr(proc, "tokenizer", proc)
        texts = [
            proc.apply_chat_template(_messages(r.prompt), add_generation_prompt=True, tokenize=False)
            for r in requests
        ]
        images = [to_pil(r.source.get("image")) for r in requests]
        # Decoder-only generation needs LEFT padding: with right padding the shorter prompts would be
        # continued after pad tokens. Restore the tokenizer's setting for the other stages.
        old_side = getattr(tokenizer, "padding_side", None)
        tokenizer.padding_side = "left"
        try:
            inputs = proc(text=texts, images=images, return_tensors="pt", padding=True)
        finally:
            if old_side is not None:
                tokenizer.padding_side = old_side
        device = _device_of(self._model)
        inputs = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in dict(inputs).items()}
        # Every distribution-shaping setting explicit: generate() would otherwise take the unset ones from the
        # checkpoint's generation_config.json (Qwen2.5-VL's: repetition_penalty 1.05, temperature 1e-6).
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, **self.decoding()}
        pad_id = getattr(tokenizer, "pad_token_id", None)
        if pad_id is not None:
            kwargs["pad_token_id"] = pad_id
        kwargs.update(self.generate_kwargs)
        torch.manual_seed(requests[0].seed)
        with torch.inference_mode():
            out = self._model.generate(**inputs, **kwargs)  # (B, prompt_len + new)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]  # (B, new): left padding aligns prompt ends
        decode = getattr(proc, "batch_decode", None) or tokenizer.batch_decode
        return [t.strip() for t in decode(new_tokens, skip_special_tokens=True)]


def _device_of(model: Any) -> Any:
    device = getattr(model, "device", None)
    if device is not None:
        return device
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return "cpu"


class VLLMBackend:
    """A VLM served in-process by vLLM (``LLM.chat``), with JSON-schema guided decoding when available.

    vLLM is imported lazily; without it construction raises :class:`VLLMNotInstalledError` (an
    ``ImportError``) saying how to install it.
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        max_new_tokens: int = 512,
        temperature: float = 1.0,
        top_p: float = 1.0,
        guided_json: bool = True,
        llm_kwargs: dict[str, Any] | None = None,
    ):
        try:
            import vllm
        except ImportError as exc:
            raise VLLMNotInstalledError(VLLM_HINT) from exc
        self._vllm = vllm
        self.model = model
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.guided_json = guided_json
        self.batch_size = 256
        self._llm = vllm.LLM(model=model, limit_mm_per_prompt={"image": 1}, **(llm_kwargs or {}))

    def fingerprint(self) -> dict[str, Any]:
        """Settings that change outputs."""
        return {
            "name": self.name,
            "model": self.model,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "guided_json": self.guided_json,
        }

    def _sampling_params(self, req: GenRequest) -> Any:
        kwargs: dict[str, Any] = {
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            # Explicit: vLLM fills unset sampling settings from the checkpoint's generation_config.json.
            "top_k": -1,
            "repetition_penalty": 1.0,
            "seed": req.seed,
        }
        if self.guided_json and req.response_schema:
            schema = to_json_schema(req.response_schema)
            # The structured-output parameter was renamed across vLLM releases; use whichever exists.
            sampling = self._vllm.sampling_params
            if hasattr(sampling, "StructuredOutputsParams"):
                kwargs["structured_outputs"] = sampling.StructuredOutputsParams(json=schema)
            elif hasattr(sampling, "GuidedDecodingParams"):
                kwargs["guided_decoding"] = sampling.GuidedDecodingParams(json=schema)
        return self._vllm.SamplingParams(**kwargs)

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        """Generate for all requests in one vLLM call; a failure marks every request of the call."""
        if not requests:
            return []
        conversations = []
        for req in requests:
            data, mime = image_bytes(req.source.get("image"))
            url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
            conversations.append(
                [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": url}},
                            {"type": "text", "text": req.prompt},
                        ],
                    }
                ]
            )
        try:
            outputs = self._llm.chat(
                conversations, sampling_params=[self._sampling_params(r) for r in requests], use_tqdm=False
            )
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"[:500]
            return [GenResult(key=r.key, error="exception", detail=detail) for r in requests]
        return [GenResult(key=r.key, text=o.outputs[0].text) for r, o in zip(requests, outputs, strict=True)]
