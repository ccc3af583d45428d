"""The `tokenize` stage: every document to token ids (EOS appended), a batch at a time (tokenize/word_encoder.py).

Adds `input_ids` (list<uint16> when the vocabulary fits in 16 bits, else list<uint32>) and
`n_tokens` (int32). `fit` loads the configured tokenizer, or trains a byte-level BPE on the first
`train_docs` documents in shard order; the tokenizer is saved as `<stage>/tokenizer.json` and its
hash goes into the manifest.

Loss masks: a `masked_spans` column (character spans [start, end) that are not training targets,
from the `prune` stage) becomes a per-token `loss_mask` for this tokenizer: a token is masked
when its characters overlap a span; the appended EOS stays a target. With `prompt_field`, SFT rows
(prompt column + `text` as the response) are tokenized as prompt, blank line, response
(tokenize/sft.py) with the prompt masked. Otherwise a `loss_mask` column an earlier stage left is
carried through only when its lengths match the new tokens, and the stage fails naming the shard.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from winnow.pipeline.retained_heap import retained_heap
from winnow.pipeline.shards import write_bytes_atomic
from winnow.pipeline.stage import Context, Cuts, ShardRef, Stage, utf8_bytes
from winnow.tokenize.sft import token_mask, training_text
from winnow.tokenize.tokenizer import EOS, eos_id, load_tokenizer, tokenizer_hash, train_bpe
from winnow.tokenize.word_encoder import WordEncoder


class TokenizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokenizer: str | None = Field(None, description="local tokenizer.json or folder; null: train a BPE here")
    vocab_size: int = Field(8192, ge=260, le=2**32 - 1, description="when training")
    train_docs: int = Field(20_000, gt=0, description="documents to train on (the first, in shard order)")
    eos: str = Field(EOS, description="end-of-document token appended to every document")
    batch_size: int = Field(1024, gt=0)
    prompt_field: str | None = Field(None, description="SFT rows: the prompt column; `text` is the response, "
                                     "the prompt is masked from the loss")


class TokenizerState:
    """The tokenizer as JSON text (small, pickles cheaply) plus its id of EOS and hash."""

    def __init__(self, json_text: str, eos: str, tokenizer=None):
        """`tokenizer`: the Tokenizer `json_text` was written from, when the caller has it (parsing a
        32k vocabulary's JSON again costs the driver ~0.1 s while every worker waits)."""
        from tokenizers import Tokenizer

        tok = tokenizer if tokenizer is not None else Tokenizer.from_str(json_text)
        self.json_text, self.eos_id, self.hash = json_text, eos_id(tok, eos), tokenizer_hash(tok)
        self.vocab_size = tok.get_vocab_size()
        self._tok = tok

    def __getstate__(self) -> dict:
        # the same keys as before the encoder existed: the state's digest (shard fingerprints) is unchanged
        return {k: v for k, v in self.__dict__.items() if k != "_encoders"} | {"_tok": None}

    @property
    def tokenizer(self):
        if self._tok is None:
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_str(self.json_text)
        return self._tok

    @property
    def encoder(self) -> WordEncoder:
        """Built once per worker thread and kept: its cache of encoded pre-tokens serves every shard
        the thread tokenizes (a worker holds the state once; its threads must not share the cache)."""
        if "_encoders" not in self.__dict__:
            self._encoders = threading.local()
        encoder = getattr(self._encoders, "encoder", None)
        if encoder is None:
            encoder = self._encoders.encoder = WordEncoder(self.tokenizer, self.json_text)
        return encoder


class TokenizeStage(Stage):
    name = "tokenize"
    Params = TokenizeParams

    def fit(self, shards: list[ShardRef], ctx: Context) -> TokenizerState:
        p: TokenizeParams = self.params
        if p.tokenizer:
            tok = load_tokenizer(p.tokenizer)
        else:
            tok = train_bpe(_first_texts(shards, p.train_docs), p.vocab_size, p.eos)
        state = TokenizerState(tok.to_str(), p.eos, tok)
        write_bytes_atomic(state.json_text.encode(), Path(ctx.workdir).parent / "tokenizer.json")
        return state

    def manifest_extra(self, state: TokenizerState) -> dict:
        return {"tokenizer_hash": state.hash, "vocab_size": state.vocab_size, "eos_id": state.eos_id}

    @classmethod
    def check_outputs(cls, stage_dir: Path, manifest: dict) -> list[tuple[Path, str, str]]:
        from winnow.tokenize.checks import check_tokenizer

        return check_tokenizer(stage_dir, manifest)

    def apply(self, table: pa.Table, state: TokenizerState) -> tuple[pa.Table, pa.Table]:
        tok = state.tokenizer
        given = table
        table = self._sft_rows(table)
        prompt_joined = table is not given
        texts = table.column("text").combine_chunks()   # handed to the encoder as Arrow: no Python str per text
        dtype = np.uint16 if state.vocab_size <= 2**16 else np.uint32
        step = self.params.batch_size
        # the encoder and the assembly below make and free numpy buffers of MBs per batch; a Dask worker's
        # glibc would unmap each one and fault its pages in again (pipeline/retained_heap.py)
        with retained_heap():
            batches = [state.encoder.encode(texts.slice(start, step)) for start in range(0, len(texts), step)]
            ids = np.concatenate([b[0] for b in batches]) if batches else np.zeros(0, np.uint32)
            lengths = (np.concatenate([b[1] for b in batches]) if batches else np.zeros(0, np.int64)) + 1
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32 if ids.size + len(lengths) < 2**31
                                                                         else np.int64)
            # every document's ids then its EOS, in one array: document d's ids shift by the d EOS before them
            values = np.empty(ids.size + len(lengths), dtype)
            values[np.arange(ids.size) + np.repeat(np.arange(len(lengths)), lengths - 1)] = ids
            values[offsets[1:] - 1] = state.eos_id
            del ids, batches   # freed inside: the heap hands them back on leaving
        arr = (pa.ListArray if offsets.dtype == np.int32 else pa.LargeListArray).from_arrays(
            pa.array(offsets), pa.array(values))
        if "masked_spans" in table.column_names:
            table = _replace(table, "loss_mask", self._span_masks(tok, texts.to_pylist(), table.column("masked_spans").to_pylist(),
                                                                   lengths))
        elif "loss_mask" in table.column_names:
            mask_lengths = np.asarray(table.column("loss_mask").combine_chunks().value_lengths())
            if not np.array_equal(mask_lengths, lengths):
                raise ValueError("an earlier loss_mask does not match the new token counts")
        table = _replace(_replace(table, "input_ids", arr), "n_tokens", pa.array(lengths, pa.int32()))
        if not prompt_joined:
            return table, self.reject(table.slice(0, 0), [])
        # prompt + response became the text: the prompt's bytes are declared as a negative cut, so the
        # byte account still holds (bytes in = bytes kept + removed, removed < 0)
        grown = utf8_bytes(table.column("text")) - utf8_bytes(given.column("text"))
        cuts = Cuts()
        cuts.add_many(np.arange(table.num_rows), "tokenize:prompt_joined", -grown)
        before = table.set_column(table.column_names.index("text"), "text", given.column("text"))
        return self.split_edited(before, table.column("text"), np.ones(table.num_rows, bool),
                                 [None] * table.num_rows, cuts)

    def _sft_rows(self, table: pa.Table) -> pa.Table:
        """With `prompt_field`: `text` becomes prompt + response, and the prompt a masked span."""
        field = self.params.prompt_field
        if not field or field not in table.column_names or "masked_spans" in table.column_names:
            return table   # a prune stage already built the training text and its spans
        pairs = [training_text(q, r or "") for q, r in
                 zip(table.column(field).to_pylist(), table.column("text").to_pylist(), strict=True)]
        table = table.set_column(table.column_names.index("text"), "text", pa.array([t for t, _ in pairs], pa.string()))
        spans = [[[0, start]] if start else [] for _, start in pairs]
        return table.append_column("masked_spans", pa.array(spans, pa.list_(pa.list_(pa.int32()))))

    @staticmethod
    def _span_masks(tok, texts: list[str], spans: list, lengths: np.ndarray) -> pa.Array:
        """Per-token loss masks (EOS included, a target) from character spans; rows without spans are all 1.
        Only rows with spans are encoded again, with offsets (the fast batch encoder computes none)."""
        masks = [[1] * int(n) for n in lengths]
        todo = [i for i, s in enumerate(spans) if s]
        for i, enc in zip(todo, tok.encode_batch([texts[i] for i in todo], add_special_tokens=False), strict=True):
            masks[i] = token_mask(enc.offsets, spans[i]) + [1]
        return pa.array(masks, pa.list_(pa.uint8()))


def _replace(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in table.column_names:
        table = table.drop_columns([name])
    return table.append_column(name, values)


def _first_texts(shards: list[ShardRef], n: int):
    """The first `n` texts in shard order, streamed (read on the driver: training is single-process)."""
    seen = 0
    for ref in shards:
        for batch in pq.ParquetFile(ref.path).iter_batches(columns=["text"], batch_size=1024):
            for text in batch.column(0).to_pylist():
                yield text
                seen += 1
                if seen >= n:
                    return
