"""Measures the prefill rate of Llama-shaped models on the local GPU, for the simulator's
profiles (the built-in scenario states prefillTokensPerSecond per replica).

Run: ``python benchmarks/gpu_prefill.py [--batch 8] [--seq 2048]`` on a machine with a CUDA
GPU and PyTorch (no model download: random weights cost the same FLOPs). Without a GPU
it says so and exits 0.

One decoder layer of each shape (Llama-3.1-8B, Qwen2.5-32B, Llama-3.1-70B) runs in bf16
with causal scaled-dot-product attention (grouped KV heads) and a SwiGLU MLP, over
``batch`` prompts of ``seq`` tokens; the full model's rate is the layer's rate / layers
(embedding and LM head left out: under 2% of a prefill). Printed beside it: the rate the
GPU's dense bf16 peak would allow (2 x params FLOPs per token plus attention), so the
ratio is the model FLOPs utilisation, and the simulator's stated rate for comparison.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    layers: int
    stated: str


SHAPES = (
    Shape("llama-3.1-8b", 4096, 14336, 32, 8, 32, "economy-8b: 8,000 tok/s on one L4"),
    Shape("qwen2.5-32b", 5120, 27648, 40, 8, 64, "standard-32b: 7,000 tok/s on one A100 (AWQ)"),
    Shape("llama-3.1-70b", 8192, 28672, 64, 8, 80, "frontier-70b: 9,000 tok/s on two H100 (FP8)"),
)


def layer_flops_per_token(s: Shape, seq: int) -> float:
    hd = s.hidden // s.heads
    proj = 2 * s.hidden * (s.heads * hd + 2 * s.kv_heads * hd) + 2 * s.heads * hd * s.hidden
    mlp = 2 * 3 * s.hidden * s.intermediate
    attn = 2 * 2 * s.heads * hd * seq / 2  # QK^T and PV, causal: half the pairs
    return proj + mlp + attn


def _layer_ms(
    torch: Any, s: Shape, b: int, n: int, *, fp8_linear: bool = False, reps: int = 10
) -> float:
    """Milliseconds of one decoder layer's forward over b x n tokens (bf16; with
    ``fp8_linear`` its projections and MLP in FP8)."""
    import torch.nn.functional as F

    dev = torch.device("cuda")
    hd = s.hidden // s.heads
    g = torch.Generator(device=dev).manual_seed(0)

    def w(i: int, o: int) -> Any:
        return torch.randn(i, o, device=dev, dtype=torch.bfloat16, generator=g) * i**-0.5

    fp8 = torch.float8_e4m3fn
    one = torch.ones((), device=dev, dtype=torch.float32)

    def linear(i: int, o: int) -> Callable[[Any], Any]:
        weight = w(i, o)
        if not fp8_linear:
            return lambda h: h @ weight
        # Per-tensor scaled FP8 (e4m3) GEMM, the weights stored column-major as
        # torch._scaled_mm wants them; activations quantised on the fly (a cost vLLM
        # pays too, fused).
        wq = weight.t().contiguous().to(fp8).t()

        def mm(h: Any) -> Any:
            flat = h.reshape(-1, i).to(fp8)
            out = torch._scaled_mm(flat, wq, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
            return out.view(*h.shape[:-1], o)

        return mm

    qkv_proj = linear(s.hidden, (s.heads + 2 * s.kv_heads) * hd)
    o_proj = linear(s.heads * hd, s.hidden)
    gate_up = linear(s.hidden, 2 * s.intermediate)
    down = linear(s.intermediate, s.hidden)
    x = torch.randn(b, n, s.hidden, device=dev, dtype=torch.bfloat16, generator=g)

    def layer(x: Any) -> Any:
        h = F.rms_norm(x, (s.hidden,))
        q, k, v = qkv_proj(h).split([s.heads * hd, s.kv_heads * hd, s.kv_heads * hd], dim=-1)
        q = q.view(b, n, s.heads, hd).transpose(1, 2)
        k = k.view(b, n, s.kv_heads, hd).transpose(1, 2)
        v = v.view(b, n, s.kv_heads, hd).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + o_proj(a.transpose(1, 2).reshape(b, n, s.heads * hd))
        gate, up = gate_up(F.rms_norm(x, (s.hidden,))).chunk(2, dim=-1)
        return x + down(F.silu(gate) * up)

    with torch.inference_mode():
        for _ in range(3):
            layer(x)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            layer(x)
        end.record()
        torch.cuda.synchronize()
    ms: float = start.elapsed_time(end) / reps
    return ms


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--fp8", action="store_true", help="projections and MLP in FP8 (Hopper, Ada)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak of the GPU (default: H100 SXM 989)")  # fmt: skip
    args = p.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("gpu_prefill: PyTorch is not installed; nothing measured")
        return 0
    if not torch.cuda.is_available():
        print("gpu_prefill: no CUDA GPU here; nothing measured")
        return 0
    name = torch.cuda.get_device_name(0)
    peak = (args.peak_tflops or 989.0) * 1e12
    b, n = args.batch, args.seq
    kind = "FP8 projections and MLP, bf16 attention" if args.fp8 else "bf16"
    print(f"{name}: {kind}, {b} prompts x {n} tokens per forward (MFU against the bf16 peak)")
    print(f"{'model':<15} {'layer ms':>9} {'tok/s (model)':>14} {'MFU':>6}  stated in the scenario")
    for s in SHAPES:
        ms = _layer_ms(torch, s, b, n, fp8_linear=args.fp8)
        torch.cuda.empty_cache()
        tok_s = b * n / (ms / 1000 * s.layers)
        mfu = tok_s * layer_flops_per_token(s, n) * s.layers / peak
        print(f"{s.name:<15} {ms:>9.2f} {tok_s:>14,.0f} {mfu:>6.1%}  {s.stated}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
