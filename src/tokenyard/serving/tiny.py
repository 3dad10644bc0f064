"""Builds tiny random-weight Llama models that vLLM serves on CPU, for tests and `tokenyard up`.

`tokenyard make-tiny-model PATH` calls :func:`main`. The model is useless for language
(random weights) but real for serving: a byte-level BPE tokenizer with a chat template
and a 2-layer Llama that vLLM loads in seconds, with no downloads.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

# A small built-in corpus: enough varied text for a 2k byte-level BPE vocabulary.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Routing sends each request to the cheapest model that is good enough for it.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Prove that the square root of two is irrational, step by step.",
    "Summarise the following contract clause in plain English for a customer.",
    "What is the capital of France? Paris is the capital of France.",
    "Kubernetes schedules pods onto nodes; Ray Serve schedules replicas onto actors.",
    "SELECT name, SUM(amount) FROM payments GROUP BY name ORDER BY 2 DESC;",
    "Budgets, rate limits and egress rules keep spend and data under control.",
    "Integrate x squared from zero to three: the answer is nine.",
    "Hello! How can I help you today? Please explain your question.",
    "0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ? ' \" # $ % & @ ^ _ ~ |",
    "system user assistant: You are a helpful assistant. Answer briefly.",
]

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


def _corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = list(_CORPUS)
    # Shuffled word salad widens the merges without any external text.
    words = " ".join(_CORPUS).split()
    for _ in range(400):
        rng.shuffle(words)
        lines.append(" ".join(words[:12]))
    return lines


def build_tiny_model(path: str | Path, seed: int = 0, vocab_size: int = 2048) -> Path:
    """Write a tiny Llama model and its tokenizer to ``path``; deterministic by ``seed``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(path).expanduser()
    out.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 512
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,  # head_dim 32: vLLM's CPU attention rejects 16
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        dtype="float32",
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    model.save_pretrained(out, safe_serialization=True)
    # Generation stops at eos or max_tokens; recorded so `tokenyard up` users see it.
    (out / "tokenyard-tiny.json").write_text(json.dumps({"seed": seed, "vocab": len(fast)}))
    return out


def is_tiny_model(path: str | Path) -> bool:
    """True when ``path`` holds a model written by :func:`build_tiny_model`."""
    p = Path(path).expanduser()
    return (p / "tokenyard-tiny.json").exists() and (p / "config.json").exists()


def main(args: argparse.Namespace) -> int:
    out = build_tiny_model(args.path, seed=args.seed)
    print(f"wrote a tiny model to {out}")
    return 0
