"""Scoring throughput of the embedding and perplexity scorers on one GPU (or a CPU slice).

Models are built from their configs with random weights (real weights above ~50 MB cannot be
brought to the GPU machine, and throughput does not depend on the values):
- embedding: the all-MiniLM-L6-v2 shape (BERT, 6 layers, width 384, FFN 1,536) behind a
  sentence-transformers mean-pooling head, run through winnow's `embed()` (the embedding_quality
  and semantic_dedup path), with a WordPiece vocabulary trained here on the texts;
- perplexity: the SmolLM2-135M shape (Llama, 30 layers, width 576, 9 heads / 3 KV heads, vocab
  49,152) and winnow's `base` proxy, through `PerplexityScorer` (the perplexity_quality path).
Texts are the web sample's documents when ../shared/data is beside the repository, else
synthetic documents with a log-normal length spread. Each scorer runs `--batches` length-sorted
batches after one warm-up batch; FLOPs are the scorers' own counts (padding included for the LMs).

    python bench/gpu/scoring.py --device cuda             # the H200 run (bench/gpu/scoring.sh)
    python bench/gpu/scoring.py --device cpu --docs 64    # a small CPU slice of the same path
Prints per scorer: documents, tokens/s, TFLOP/s and the fraction of the bf16 peak (989 TFLOP/s
datasheet, ~790 measured on an 8192^3 matmul) on CUDA, or of a measured fp32 matmul on CPU.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

H200_BF16 = 989e12


def texts_for(n: int, seed: int = 0) -> list[str]:
    web = REPO.parent / "shared" / "data" / "web"
    rng = np.random.default_rng(seed)
    if web.is_dir():
        docs = [json.loads(line)["text"] for f in sorted(web.rglob("*.jsonl")) for line in f.open()]
        return [docs[i] for i in rng.choice(len(docs), min(n, len(docs)), replace=False)]
    words = [f"w{i}" for i in range(5000)]
    lengths = np.clip(rng.lognormal(6.0, 1.0, n), 8, 20000).astype(int)  # words per document
    return [" ".join(rng.choice(words, k)) for k in lengths]


def peak(device: str) -> tuple[float, str]:
    if device.startswith("cuda"):
        return H200_BF16, "H200 dense bf16 datasheet"
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    return 10 * 2 * 1024**3 / (time.perf_counter() - t0), "measured fp32 matmul"


def minilm_shaped(folder: str, texts: list[str]) -> str:
    """A random-weight MiniLM-shaped sentence-transformers model saved at `folder`."""
    from sentence_transformers import SentenceTransformer, models
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, trainers
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tok = Tokenizer(WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=30522, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                      sep_token="[SEP]", mask_token="[MASK]").save_pretrained(folder)
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(folder)
    body = models.Transformer(folder, max_seq_length=256)
    SentenceTransformer(modules=[body, models.Pooling(384, "mean"), models.Normalize()]).save(folder)
    return folder


def smollm2_shaped(device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, rope_theta=1e5,
                      max_position_embeddings=8192)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval(), cfg


def random_encoder(vocab: int, seed: int = 0):
    """Token ids for a text: about one per 4 characters (a BPE's rate on English web text), random;
    with 4-character offsets, as the reference-LM scorer wants (ids, offsets)."""
    rng = np.random.default_rng(seed)

    def encode(texts):
        ids = [rng.integers(0, vocab, max(2, len(t) // 4)).tolist() for t in texts]
        return ids, [[(4 * k, 4 * k + 4) for k in range(len(x))] for x in ids]

    return encode


def run(name: str, score, texts: list[str], scorer, n_batches: int, batch_docs: int, pk: float, device: str
        ) -> dict:
    score(texts[:batch_docs])  # warm-up: kernels, allocator, caches
    scorer.flops = 0.0
    todo = texts[: n_batches * batch_docs]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    score(todo)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    tokens = sum(min(len(t) // 4, 256) for t in todo)  # tokens read (scorers read the first 256)
    row = {"scorer": name, "docs": len(todo), "seconds": round(sec, 2), "docs_per_s": round(len(todo) / sec, 1),
           "tokens_per_s": round(tokens / sec), "tflops": round(scorer.flops / sec / 1e12, 3),
           "peak_fraction": round(scorer.flops / sec / pk, 4)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--docs", type=int, default=8192, help="documents drawn (the CPU slice: 64)")
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from winnow.raters.embedding_rater import EmbeddingScorer
    from winnow.raters.perplexity_rater import LoadedLM, PerplexityScorer

    device = args.device
    pk, pk_name = peak(device)
    texts = texts_for(args.docs)
    batch_docs = max(1, len(texts) // (args.batches + 1))
    print(f"{device}: {len(texts)} documents, {args.batches} batches of {batch_docs}; peak {pk / 1e12:.3f} "
          f"TFLOP/s ({pk_name})", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = minilm_shaped(f"{tmp}/minilm", texts)
        emb = EmbeddingScorer("<no head>", folder, device, batch_size=256 if device.startswith("cuda") else 32)
        rows.append(run("embedding (MiniLM shape)", emb.embed, texts, emb, args.batches, batch_docs, pk, device))

    model, cfg = smollm2_shaped(device)
    lm = LoadedLM(lambda x: model.model(input_ids=x).last_hidden_state, model.lm_head.weight,
                  random_encoder(cfg.vocab_size), 8192, sum(p.numel() for p in model.parameters()),
                  cfg.num_hidden_layers, cfg.hidden_size)
    ppl = PerplexityScorer.from_model(lm, device, max_tokens=256,
                                      batch_tokens=65536 if device.startswith("cuda") else 4096)
    rows.append(run("perplexity (SmolLM2-135M shape)", ppl.score, texts, ppl, args.batches, batch_docs, pk, device))

    from winnow.proxy.model import ProxyLM, config_for

    pcfg = config_for("base", 8192, 1024)
    proxy = ProxyLM(pcfg).to(device).eval()
    plm = LoadedLM(proxy.hidden, proxy.embed.weight, random_encoder(pcfg.vocab_size, 1), 1024,
                   sum(p.numel() for p in proxy.parameters()), pcfg.n_layer, pcfg.d_model)
    pscore = PerplexityScorer.from_model(plm, device, max_tokens=256,
                                         batch_tokens=65536 if device.startswith("cuda") else 4096)
    rows.append(run("perplexity (winnow base proxy)", pscore.score, texts, pscore, args.batches, batch_docs, pk,
                    device))
    print("summary: " + "; ".join(f"{r['scorer']}: {r['tokens_per_s']:,} tok/s, "
                                  f"{100 * r['peak_fraction']:.1f}% of peak" for r in rows))


if __name__ == "__main__":
    main()
