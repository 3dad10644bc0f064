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


LORA_TARGET_MODULES = ("q_proj", "v_proj")


def build_tiny_lora(
    path: str | Path, base: str | Path, *, seed: int = 0, rank: int = 8, scale: float = 1.0
) -> Path:
    """Write a PEFT-format LoRA adapter for the tiny model at ``base`` to ``path``:
    ``adapter_config.json`` and ``adapter_model.safetensors`` on the attention's q and v
    projections of every layer, deterministic by ``seed``. Both LoRA matrices are random
    (``scale`` sizes B), so the adapter visibly changes what the model generates."""
    import torch
    from safetensors.torch import save_file

    src = Path(base).expanduser()
    cfg = json.loads((src / "config.json").read_text())
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    out_dims = {
        "q_proj": heads * head_dim,
        "v_proj": int(cfg.get("num_key_value_heads") or heads) * head_dim,
    }
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(int(cfg["num_hidden_layers"])):
        for module in LORA_TARGET_MODULES:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            a = torch.randn(rank, hidden, generator=gen) / hidden**0.5
            b = torch.randn(out_dims[module], rank, generator=gen) * scale
            tensors[f"{prefix}.lora_A.weight"] = a.contiguous()
            tensors[f"{prefix}.lora_B.weight"] = b.contiguous()
    out = Path(path).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(src),
        "r": rank,
        "lora_alpha": rank,
        "lora_dropout": 0.0,
        "target_modules": list(LORA_TARGET_MODULES),
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out


def is_tiny_model(path: str | Path) -> bool:
    """True when ``path`` holds a model written by :func:`build_tiny_model`."""
    p = Path(path).expanduser()
    return (p / "tokenyard-tiny.json").exists() and (p / "config.json").exists()


def main(args: argparse.Namespace) -> int:
    out = build_tiny_model(args.path, seed=args.seed)
    print(f"wrote a tiny model to {out}")
    return 0
