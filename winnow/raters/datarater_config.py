"""The DataRater's settings: the rater's shape and meta-training's (`meta:` in a `datarater` stage block).

Torch-free, so `winnow validate` checks a `meta:` block where it reads the config: a bad value is an error
at its own line, not a worker's traceback after ingest. raters/datarater.py runs what these describe.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from winnow.pipeline.errors import KeyedValueError

if TYPE_CHECKING:
    from winnow.proxy.model import ProxyConfig


@dataclass
class RaterConfig:
    vocab_size: int = 2048
    seq_len: int = 128
    n_layer: int = 1
    n_head: int = 2
    d_model: int = 64
    mlp_ratio: int = 4
    conv_kernel: int = 3    # width of a convolution over the embeddings (n-gram features); 0: none
    positions: bool = True  # learned absolute positions (their mean over a row tells its length); False: none


@dataclass
class MetaConfig:
    # rater
    rater_layers: int = 1
    rater_heads: int = 2
    rater_d: int = 64
    rater_conv: int = 3            # odd width of the rater's n-gram convolution; 0: a plain transformer
    rater_positions: bool = False  # learned absolute positions in the rater (they let a score follow length)
    seq_len: int = 128
    # inner models (a custom ProxyConfig; d=64, 2 layers on CPU)
    inner_layers: int = 2
    inner_heads: int = 2
    inner_d: int = 64
    n_models: int = 2
    lifetime: int = 600            # inner steps between re-initialisations of one model
    prewarm: int = 150             # plain (unweighted) steps after each (re)initialisation
    inner_opt: str = "adam"        # adam (m, v in the graph) | sgd
    inner_lr: float = 1e-2
    inner_betas: tuple[float, float] = (0.9, 0.99)
    inner_eps: float = 1e-8
    inner_batch: int = 16
    outer_batch: int = 32
    unroll: int = 2                # inner steps kept in the graph per meta-step
    first_order: bool = False      # T=1 SGD look-ahead (gradient-alignment) variant
    # the uniform-weight control runs on this last fraction of the meta-steps: the ones its summary
    # (uniform_control) reads; it never touches the rater or the inner models, so earlier runs of it
    # would only be discarded (~20% of a meta-step's time each). 1.0: every step (a curve over the whole fit)
    control_tail: float = 0.5
    # the rater returned is the mean of its weights after each of this last fraction of the meta-steps (Polyak
    # averaging; the fit itself goes on with the latest weights): one step's rater wanders, the soup10 AUC moved
    # between 0.19 and 0.99 within one fit (bench/LOG.md). 0: the last step's weights
    average_tail: float = 0.5
    # scores -> weights
    score_norm: str = "none"       # none | standardize (z-score within the batch before the softmax)
    temperature: float = 1.0
    # meta optimiser (per-model Adam, updates averaged)
    meta_steps: int = 100          # averaged, as good as or better than 200 raw steps (bench/LOG.md, session 15)
    meta_lr: float = 1e-2
    meta_betas: tuple[float, float] = (0.9, 0.99)
    meta_eps: float = 1e-8
    meta_weight_decay: float = 0.0
    meta_warmup: int = 10
    meta_clip: float = 1.0
    # run
    seed: int = 0
    device: str = "auto"
    threads: int | None = None     # CPU cores for meta-training (None: all this process may use)
    dtype: str = "float32"         # float64 for gradient checks
    # "bf16": inner models' and rater's matmuls in bf16 (CPUs with avx512_bf16). Off by default: ~13% less time,
    # but the rater stops learning (soup10 AUC 0.62/0.35/0.45 against 0.74/0.68/0.92 in fp32, bench/LOG.md)
    autocast: str | None = None
    checkpoint_every: int = 25
    log_every: int = 10

    def __post_init__(self) -> None:
        check_meta_config(self)

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any], **defaults: Any) -> MetaConfig:
        """A config from a YAML `meta:` block over `defaults`: unknown keys and bad values raise
        `KeyedValueError` naming the key; YAML lists become the tuples the betas are."""
        known = sorted(f.name for f in fields(cls))
        for key in overrides:
            if key not in known:
                raise KeyedValueError(f"unknown key {key!r}; known keys: {', '.join(known)}", key=key)
        values = {**defaults, **overrides}
        return cls(**{k: tuple(v) if k.endswith("betas") and isinstance(v, list) else v for k, v in values.items()})

    def rater_config(self, vocab_size: int) -> RaterConfig:
        return RaterConfig(vocab_size=vocab_size, seq_len=self.seq_len, n_layer=self.rater_layers,
                           n_head=self.rater_heads, d_model=self.rater_d,
                           conv_kernel=self.rater_conv, positions=self.rater_positions)

    def inner_config(self, vocab_size: int) -> ProxyConfig:
        from winnow.proxy.model import ProxyConfig  # torch: the config itself is read without it

        return ProxyConfig(vocab_size=vocab_size, n_layer=self.inner_layers, n_head=self.inner_heads,
                           d_model=self.inner_d, max_seq_len=self.seq_len)


CHOICES = {"inner_opt": ("adam", "sgd"), "score_norm": ("none", "standardize"), "autocast": (None, "bf16"),
           "dtype": ("float32", "float64")}
# at least 1 (the others may be 0 or have bounds of their own below)
POSITIVE = ("rater_layers", "rater_heads", "rater_d", "seq_len", "inner_layers", "inner_heads", "inner_d",
            "n_models", "lifetime", "inner_batch", "outer_batch", "unroll", "meta_steps", "checkpoint_every")


def _type_error(name: str, value: Any, kind: Any) -> str | None:
    """Why `value` is not of the annotated `kind` (int, float, bool, str, a pair of floats, or X | None)."""
    union = typing.get_origin(kind) in (typing.Union, types.UnionType)
    if value is None:
        return None if union and type(None) in typing.get_args(kind) else f"{name} must not be null"
    kinds = [k for k in typing.get_args(kind) if k is not type(None)] if union else [kind]
    for k in kinds:
        if k is bool and isinstance(value, bool):
            return None
        if k is int and isinstance(value, int) and not isinstance(value, bool):
            return None
        if k is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return None
        if k is str and isinstance(value, str):
            return None
        if typing.get_origin(k) is tuple and isinstance(value, (tuple, list)) and len(value) == 2 \
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return None
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    wanted = " or ".join(words.get(k, "a pair of numbers") for k in kinds)
    return f"{name} must be {wanted} (got {value!r})"


def check_meta_config(cfg: MetaConfig) -> None:
    """Raise `KeyedValueError` (a ValueError naming the key) for the first setting meta-training cannot run."""
    hints = typing.get_type_hints(MetaConfig)
    for f in fields(cfg):
        problem = _type_error(f.name, getattr(cfg, f.name), hints[f.name])
        if problem:
            raise KeyedValueError(problem, key=f.name)
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise KeyedValueError(f"{name} must be one of {', '.join(map(repr, allowed))} (got {getattr(cfg, name)!r})",
                                  key=name)
    for name in POSITIVE:
        if getattr(cfg, name) < 1:
            raise KeyedValueError(f"{name} must be at least 1 (got {getattr(cfg, name)})", key=name)
    if cfg.prewarm < 0:
        raise KeyedValueError(f"prewarm must be at least 0 (got {cfg.prewarm})", key="prewarm")
    if cfg.lifetime <= cfg.prewarm + cfg.unroll:
        # name the setting that was moved from its default (the config's own line for it)
        key = next((k for k in ("lifetime", "prewarm", "unroll") if getattr(cfg, k) != getattr(MetaConfig, k)), "lifetime")
        raise KeyedValueError(f"lifetime ({cfg.lifetime}) must exceed prewarm ({cfg.prewarm}) + unroll ({cfg.unroll}): "
                              "a model must live past its plain steps to take a meta-step", key=key)
    if cfg.first_order and cfg.unroll != 1:
        raise KeyedValueError("first_order is the T=1 variant: set unroll=1", key="first_order")
    if not 0 < cfg.control_tail <= 1:
        raise KeyedValueError(f"control_tail must be in (0, 1], the share of meta-steps that run the uniform "
                              f"control (got {cfg.control_tail})", key="control_tail")
    if not 0 <= cfg.average_tail <= 1:
        raise KeyedValueError(f"average_tail must be in [0, 1], the share of meta-steps whose rater weights are "
                              f"averaged into the rater returned (got {cfg.average_tail})", key="average_tail")
    if cfg.rater_conv < 0 or (cfg.rater_conv and cfg.rater_conv % 2 == 0):
        raise KeyedValueError(f"rater_conv must be odd or 0 (got {cfg.rater_conv})", key="rater_conv")
    for width, heads in (("rater_d", "rater_heads"), ("inner_d", "inner_heads")):
        if getattr(cfg, width) % getattr(cfg, heads):
            raise KeyedValueError(f"{width} ({getattr(cfg, width)}) must be a multiple of {heads} "
                                  f"({getattr(cfg, heads)})", key=width)
    for name in ("temperature", "inner_lr", "meta_lr"):
        if getattr(cfg, name) <= 0:
            raise KeyedValueError(f"{name} must be above 0 (got {getattr(cfg, name)})", key=name)
    for name in ("inner_betas", "meta_betas"):
        if not all(0 <= b < 1 for b in getattr(cfg, name)):
            raise KeyedValueError(f"{name} must be two numbers in [0, 1) (got {list(getattr(cfg, name))})", key=name)
    if cfg.threads is not None and cfg.threads < 1:
        raise KeyedValueError(f"threads must be at least 1 or null (got {cfg.threads})", key="threads")
