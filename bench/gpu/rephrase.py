"""Batched rephrasing throughput through winnow's transformers backend (the GPU path of `rephrase`).

The SmolLM2-135M shape (Llama, 30 layers, width 576, 9 heads / 3 KV heads, vocab 49,152) is built
from its config with random weights in bf16 (real weights cannot be brought to the GPU machine:
../shared/GPU.md), with a BPE tokenizer trained here and a ChatML template. Prompts are real
rephrase requests (winnow's templates around web chunks of ~100-300 tokens; synthetic text when
../shared/data is absent). Random weights never stop at EOS on their own, so every request
generates exactly `--new-tokens` (min = max new tokens). For each batch size: one warm-up batch,
then batches until `--budget-s`; prints prompt and generated tokens/s, the FLOPs (2·N per token,
prompt and generated) as a share of the bf16 peak, and peak memory.

    python bench/gpu/rephrase.py --device cuda                    # bench/gpu/rephrase.sh
    python bench/gpu/rephrase.py --device cpu --quick             # a CPU dry run of the same path
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

H200_BF16 = 989e12
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def chunks(n: int) -> list[str]:
    from winnow.synth.chunking import count_tokens, split_chunks

    web = REPO.parent / "shared" / "data" / "web"
    out: list[str] = []
    for path in sorted(web.rglob("*.jsonl")) if web.exists() else []:
        for line in path.read_text().splitlines():
            for c in split_chunks(json.loads(line)["text"]):
                if 100 <= count_tokens(c) <= 300:
                    out.append(c)
            if len(out) >= n:
                return out[:n]
    words = ["the", "of", "and", "a", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "this", "are", "be", "it", "an"]
    import random

    rng = random.Random(0)
    while len(out) < n:
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(80, 240))) + ".")
    return out


def build_model(folder: Path, texts: list[str], quick: bool) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=8000, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="<unk>")
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2) if quick else \
        dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3)
    config = LlamaConfig(vocab_size=49152, tie_word_embeddings=True, rope_theta=1e5, max_position_embeddings=2048,
                         bos_token_id=None, eos_token_id=fast.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=fast.convert_tokens_to_ids("<|endoftext|>"), **shape)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", default="64,128,256")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--budget-s", type=float, default=90, help="per batch size, after the warm-up")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="append one JSON line per batch size here")
    args = ap.parse_args()
    if args.quick:
        args.batches, args.new_tokens, args.budget_s = "4", 16, 5
    import torch

    from winnow.synth import prompts
    from winnow.synth.transformers_backend import TransformersBackend
    from winnow.synth.types import GenerationParams

    sizes = [int(b) for b in args.batches.split(",")]
    texts = chunks(max(sizes) * 4)
    folder = Path(tempfile.mkdtemp(prefix="smollm2-shape-"))
    t0 = time.perf_counter()
    build_model(folder, texts, args.quick)
    backend = TransformersBackend(str(folder), device=args.device)
    print(f"model: {backend.parameters / 1e6:.1f}M parameters on {backend.device}, "
          f"{next(backend.lm.parameters()).dtype}; built and loaded in {time.perf_counter() - t0:.1f} s")
    requests = [prompts.build_request(c, "wiki" if i % 2 else "qa", i) for i, c in enumerate(texts)]
    for size in sizes:
        params = GenerationParams(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, temperature=0.8,
                                  top_p=0.95, concurrency=size)
        backend.generate(requests[:size], params)          # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        done, prompt_tokens, new_tokens, start = 0, 0, 0, time.perf_counter()
        while time.perf_counter() - start < args.budget_s:
            batch = [requests[(done + k) % len(requests)] for k in range(size)]
            results = backend.generate(batch, params)
            errors = [r.error for r in results if r.error]
            if errors:
                raise SystemExit(f"batch {size}: {errors[0]}")
            prompt_tokens += sum(r.prompt_tokens for r in results)
            new_tokens += sum(r.completion_tokens for r in results)
            done += size
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        flops = 2 * backend.parameters * (prompt_tokens + new_tokens)
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
        row = {"batch": size, "requests": done, "seconds": round(seconds, 2), "new_tok_s": round(new_tokens / seconds, 1),
               "prompt_tok_s": round(prompt_tokens / seconds, 1), "tflops": round(flops / seconds / 1e12, 3),
               "share_of_bf16_peak": round(flops / seconds / H200_BF16, 5), "peak_gib": round(peak, 2)}
        print(f"batch {size:4}: {row['new_tok_s']:>10,.1f} generated tok/s, {row['prompt_tok_s']:>10,.1f} prompt tok/s, "
              f"{row['tflops']:.2f} TFLOP/s ({100 * row['share_of_bf16_peak']:.2f}% of 989), peak {row['peak_gib']} GiB "
              f"[{done} requests in {seconds:.1f} s]")
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps({"bench": "rephrase", **row}) + "\n")


if __name__ == "__main__":
    main()
