"""The embedded default model: a real, tiny ``Qwen2_5_VLForConditionalGeneration`` built offline.

Nothing here downloads anything. The tokenizer is a byte-level BPE trained on a corpus the caller passes
(SynthMed's vocabulary), wrapped as a ``PreTrainedTokenizerFast`` with Qwen's special tokens; the processor
is a Qwen2.5-VL processor around the PIL image processor (torchvision does not import beside the CPU torch
wheel, so the torchvision-backed processors are out). Everything is saved with ``save_pretrained`` so the
rest of the code loads the tiny model through the same ``from_pretrained`` path as a hub checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from medgr2.models.processor import ImageOnlyQwen2_5_VLProcessor, register_processor

# Qwen's control tokens; the ids in the model config are read back from the trained tokenizer.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Not special (they must survive decoding), but atomic, so that the answer letter after "<answer>" is
# always its own token: the letter-token loss/accuracy and per-option probabilities depend on it.
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# The tiny model's processor is the image-only Qwen2.5-VL processor every checkpoint loads through.
TinyQwen2_5_VLProcessor = ImageOnlyQwen2_5_VLProcessor
register_tiny_processor = register_processor


@dataclass
class TinyVLMSpec:
    """Sizes of the tiny model (defaults: ~0.35 M params, learns SynthMed on CPU; docs/field-facts.md)."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_hidden_size: int = 64
    vision_intermediate_size: int = 128
    vision_depth: int = 2
    vision_heads: int = 4
    image_size: int = 56  # square side in pixels; 56 px -> 4x4 patches -> 4 merged image tokens
    vocab_size: int = 512
    max_position_embeddings: int = 1024
    seed: int = 0
    # M-RoPE frequency pairs for (time, height, width); they must sum to head_dim / 2. None: derived in
    # Qwen2.5-VL's proportions (1/4 time, the rest split between height and width): [2, 3, 3] at head_dim 16.
    mrope_section: list[int] | None = None

    def rope_sections(self) -> list[int]:
        """The M-RoPE sections for this size (``mrope_section`` checked, or derived when None)."""
        half = self.hidden_size // self.num_heads // 2
        if self.mrope_section is not None:
            if sum(self.mrope_section) != half:
                raise ValueError(f"tiny.mrope_section {list(self.mrope_section)} must sum to head_dim/2 = {half} "
                                 f"(hidden_size {self.hidden_size} / num_heads {self.num_heads} / 2); "
                                 "leave it null to derive it")
            return list(self.mrope_section)
        t = half // 4
        h = (half - t) // 2
        return [t, h, half - t - h]


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``corpus`` (deterministic for a fixed corpus order) and wrap it."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )
    fast.add_tokens(TAG_TOKENS)
    return fast


def build_tiny_vlm(spec: TinyVLMSpec, corpus: Iterable[str], out_dir: str | Path) -> Path:
    """Build tokenizer, processor and a randomly initialised tiny Qwen2.5-VL; save all to ``out_dir``.

    Deterministic from ``spec.seed`` and the corpus. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(corpus, spec.vocab_size)
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": spec.image_size * spec.image_size, "longest_edge": spec.image_size * spec.image_size},
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
    )
    processor = ImageOnlyQwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                        chat_template=CHAT_TEMPLATE)
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": spec.hidden_size,
            "intermediate_size": spec.intermediate_size,
            "num_hidden_layers": spec.num_layers,
            "num_attention_heads": spec.num_heads,
            "num_key_value_heads": spec.num_kv_heads,
            "max_position_embeddings": spec.max_position_embeddings,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": spec.rope_sections()},
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
            "tie_word_embeddings": True,
        },
        vision_config={
            "depth": spec.vision_depth,
            "hidden_size": spec.vision_hidden_size,
            "intermediate_size": spec.vision_intermediate_size,
            "num_heads": spec.vision_heads,
            "out_hidden_size": spec.hidden_size,
            "fullatt_block_indexes": [spec.vision_depth - 1],
            "window_size": 112,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    model.generation_config.eos_token_id = ids("<|im_end|>")
    model.generation_config.bos_token_id = ids("<|endoftext|>")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
