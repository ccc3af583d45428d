"""Proxy models: FLOP accounting by hand, intra-document masking, the multiplier, and a planted signal."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SHARED_DATA

from winnow.proxy.flops import flops_per_token, non_embedding_params
from winnow.proxy.model import ProxyConfig, ProxyLM, config_for
from winnow.proxy.multiplier import baseline_flops_for, multiplier


def test_flop_counter_matches_a_hand_computation():
    cfg = config_for("tiny", vocab_size=2048, max_seq_len=256)
    # d=128, SwiGLU hidden = ceil(8/3*128/32)*32 = 352; per layer: attention 4*128^2 = 65,536,
    # MLP 3*128*352 = 135,168, two norms 256 -> 200,960; 4 layers + final norm 128 = 803,968
    assert non_embedding_params(cfg) == 803_968
    assert ProxyLM(cfg).non_embedding_params() == 803_968          # the model really has them
    # 6N + 12*L*H*Q*T + 6*d*V = 4,823,808 + 12*4*4*32*256 + 6*128*2048
    assert flops_per_token(cfg, 256) == 4_823_808 + 1_572_864 + 1_572_864


def test_intra_document_mask_isolates_documents():
    torch.manual_seed(0)
    cfg = config_for("tiny", vocab_size=500, max_seq_len=64)
    model = ProxyLM(cfg).eval()
    ids = torch.randint(0, 500, (1, 48))
    segments = torch.tensor([[1] * 20 + [2] * 28])
    positions = torch.cat([torch.arange(20), torch.arange(28)]).unsqueeze(0)
    altered = ids.clone()
    altered[0, :20] = torch.randint(0, 500, (20,))                     # change only the first document
    with torch.no_grad():
        a = model(ids, segments, positions)[0, 20:]
        b = model(altered, segments, positions)[0, 20:]
        plain_a, plain_b = model(ids)[0, 20:], model(altered)[0, 20:]
    assert torch.allclose(a, b, atol=1e-5)                              # doc 2 cannot see doc 1
    assert not torch.allclose(plain_a, plain_b, atol=1e-3)             # plain causal packing can
    # and a document packed after another equals the same document alone (positions restart)
    alone = model(ids[:, 20:])[0]
    assert torch.allclose(a, alone, atol=1e-4)


def test_multiplier_interpolates_in_log_flops_and_bounds_outside():
    curve = [(1e10, 4.0), (2e10, 3.5), (4e10, 3.2)]
    flops, status = baseline_flops_for(3.5, curve)
    assert status == "interpolated" and flops == pytest.approx(2e10)
    flops, _ = baseline_flops_for(3.35, curve)
    assert flops == pytest.approx((2e10 * 4e10) ** 0.5)               # halfway in loss -> geometric mean
    assert baseline_flops_for(3.0, curve)[1] == "not_reached"
    assert baseline_flops_for(4.5, curve)[1] == "below_range"
    m = multiplier(3.5, 1e10, curve, curation_flops=1e10)
    assert m["multiplier"] == pytest.approx(2.0) and m["net_multiplier"] == pytest.approx(1.0)


PLANTED_BUDGET = 1e12


def _write_arm(folder: Path, ids: list[str], texts: list[str]) -> str:
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"id": ids, "text": texts}), folder / "train-00000.parquet")
    return str(folder)


def test_planted_signal_clean_beats_clean_plus_junk(tmp_path, one_thread):
    """Baseline: clean book chunks plus 50% more documents of shuffled-word junk (other books' words).
    Curated: the same clean chunks alone. On held-out chunks of the clean books (an id-hash slice the
    protocol keeps out of both arms) the curated arm must need clearly less compute, with the 95%
    interval over three seeds above 1.
    Measured at 1e12 FLOPs with one torch thread: per seed 1.42, 1.66, 1.40 (mean 1.49, std 0.15,
    interval 1.13-1.86; 1,239 s on the shared 2-core machine under load). With the default thread
    count and before held-out 13-gram removal the same seeds gave 1.35 ± 0.04: the seed spread, not
    the design, sets the margin. Asserted with that margin stated: every seed above 1 (lowest seen
    1.40), the mean above 1.2 (3.4 standard errors of the measured mean below it), the interval's
    lower end above 1 (measured 1.13: the thinnest margin, and the claim the protocol makes)."""
    from winnow.proxy.evaluate import EvalConfig, run_eval

    books = SHARED_DATA / "reference/gutenberg_books"

    def read(name: str) -> list[dict]:
        return [json.loads(line) for line in (books / name).read_text().rstrip("\n").split("\n")]

    clean = read("gitenberg_books-000.jsonl")
    rng = random.Random(0)
    junk = []
    for r in rng.sample(read("gitenberg_books-001.jsonl"), len(clean) // 2):
        words = r["text"].split()
        rng.shuffle(words)
        junk.append({"id": f"junk-{r['id']}", "text": " ".join(words)})
    ids, texts = [r["id"] for r in clean], [r["text"] for r in clean]
    cfg = EvalConfig(
        arms={"with_junk": _write_arm(tmp_path / "junk", ids + [r["id"] for r in junk], texts + [r["text"] for r in junk]),
              "clean": _write_arm(tmp_path / "clean", ids, texts)},
        output=str(tmp_path / "eval"), pool_heldout_fraction=0.0,
        heldout={"clean_text": {"paths": [str(books / "gitenberg_books-000.jsonl")], "tokens": 20_000,
                                "heldout_fraction": 0.15}},
        vocab_size=2048, size="tiny", seq_len=64, batch_size=8, lr=4e-3, flop_budget=PLANTED_BUDGET,
        baseline_budgets=[0.5, 1.0, 2.0], seeds=[0, 1, 2], n_evals=1)
    report = run_eval(cfg, log=lambda *a: None)
    arm = report["arms"]["clean"]["clean_text"]
    assert arm["status"] == ["interpolated"], arm                     # else no interval is reported
    assert min(p["multiplier"] for p in arm["per_seed"]) > 1.0, arm
    assert arm["multiplier"] > 1.2, arm
    assert arm["interval"][0] > 1.0, arm
    assert report["heldout"]["clean_text"]["documents"] >= 5          # every book of the file is in the sample
    assert Path(report["plot"]).stat().st_size > 10_000
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert {p["status"] for p in saved["arms"]["clean"]["clean_text"]["per_seed"]} <= {"interpolated", "not_reached"}
    assert all(r["points"] for r in saved["runs"])


def _gold_logp_choice(model, tokenizer, context: str, choices: list[str], seq_len: int) -> int:
    """The choice with the highest mean log-probability per continuation token, by one plain forward pass each."""
    best, best_score = -1, -float("inf")
    for k, choice in enumerate(choices):
        ctx = tokenizer.encode(context, add_special_tokens=False).ids
        cont = tokenizer.encode(choice, add_special_tokens=False).ids
        ids = torch.tensor([(ctx + cont)[-seq_len:]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids)[0].float(), -1)
        n = min(len(cont), ids.shape[1] - 1)
        score = sum(logp[p - 1, ids[0, p]].item() for p in range(ids.shape[1] - n, ids.shape[1])) / n
        if score > best_score:
            best, best_score = k, score
    return best


def _memorise(model, tokenizer, items: list[tuple[str, list[str], int]], seq_len: int, steps: int) -> None:
    """Train on each item's context followed by its gold ending (tokenized as the scorer does) until learnt."""
    seqs = [(tokenizer.encode(c, add_special_tokens=False).ids
             + tokenizer.encode(ch[label], add_special_tokens=False).ids)[-seq_len:] for c, ch, label in items]
    width = max(map(len, seqs))
    x = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width - 1)
    for i, seq in enumerate(seqs):                      # right padding: a causal model's real positions ignore it
        x[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq) - 1] = 1
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        logits = model(x)[:, :-1]
        loss = (torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none") * mask).sum()
        opt.zero_grad()
        (loss / mask.sum()).backward()
        opt.step()


def test_downstream_accuracy_is_the_share_of_items_a_model_gets_right(tmp_path, one_thread):
    """HellaSwag and PIQA end to end: for a random model and for one that memorised the gold endings, the
    accuracy is exactly the share of items whose gold ending has the best mean log-probability per token
    (recomputed here by plain forward passes); the memorising model scores far above chance."""
    from safetensors.torch import load_file

    from winnow.proxy.downstream import load_hellaswag, load_piqa, score_downstream
    from winnow.proxy.evaluate import DownstreamConfig
    from winnow.proxy.train import save_checkpoint
    from winnow.tokenize.tokenizer import train_bpe

    folder = SHARED_DATA / "eval"
    texts = [json.loads(line)["ctx"] for line in
             (folder / "hellaswag/hellaswag_val-000.jsonl").read_text().rstrip("\n").split("\n")[:200]]
    tok = train_bpe(texts, 400)
    torch.manual_seed(0)
    small = ProxyConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, d_model=64, max_seq_len=128)
    model = ProxyLM(small)          # smaller than `tiny`: memorising 16 items takes seconds on a CPU
    cfg = DownstreamConfig(hellaswag=8, piqa=8, data=str(folder))
    items = {"hellaswag": load_hellaswag(folder, 8), "piqa": load_piqa(folder, 8)}
    assert [len(v) for v in items.values()] == [8, 8]

    def expected(m) -> dict[str, float]:
        return {task: sum(_gold_logp_choice(m, tok, c, ch, 128) == label for c, ch, label in its) / len(its)
                for task, its in items.items()}

    random_model = score_downstream(model, tok, cfg, 128)
    assert {t: r["accuracy"] for t, r in random_model.items()} == expected(model)
    assert random_model["hellaswag"]["items"] == 8 and random_model["piqa"]["chance"] == 0.5
    _memorise(model, tok, items["hellaswag"] + items["piqa"], 128, steps=40)
    learnt = score_downstream(model, tok, cfg, 128)
    assert {t: r["accuracy"] for t, r in learnt.items()} == expected(model)
    # 7 of 8 or better: a model that does not know the items reaches it with p = 0.0004 (HellaSwag), 0.035 (PIQA)
    assert learnt["hellaswag"]["accuracy"] >= 7 / 8 and learnt["piqa"]["accuracy"] >= 7 / 8, learnt
    save_checkpoint(model, str(tmp_path / "m.safetensors"), {"size": "tiny"})
    restored = ProxyLM(small)
    restored.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    x = torch.randint(0, tok.get_vocab_size(), (1, 16))
    assert torch.equal(model.eval()(x), restored.eval()(x))
