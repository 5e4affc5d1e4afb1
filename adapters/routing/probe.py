"""The probe: a logistic regression on the fast model's pooled hidden states, trained with
`dflash-train-router`, and the scoring policy that uses it. A probe file is one safetensors file
with its configuration in the metadata."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

import mlx.core as mx

from ..errors import DFlashError
from .decision import DEFAULT_THRESHOLD, ScoringPolicy
from .fast_model import FastModel

PROBE_FORMAT = "dflash-router-probe"
PROBE_MAX_TOKENS = 512  # the probe reads the first tokens of a long prompt
# A probe keeps the features of this prompt on the model it was trained on: another model of the
# same shape (a retrained fast model) gives different ones. The tolerance allows for dtypes.
CANARY_PROMPT = "The router probe checks that it reads the hidden states of the model it was trained on."
CANARY_TOLERANCE = 0.05  # relative L2 distance


def pooled_features(fast: FastModel, prompt: str, layer_ids: Sequence[int]) -> mx.array:
    """The mean over the prompt's positions of [final normed hidden states ; layers `layer_ids`]:
    a float32 vector of (1 + len(layer_ids)) * hidden_size features."""
    tokens = fast.tokenizer.encode(prompt)[:PROBE_MAX_TOKENS]
    verified = fast.adapter.verify(mx.array(tokens)[None], fast.adapter.make_cache(), layer_ids)
    return mx.concatenate([verified.hidden, verified.taps], axis=-1)[0].astype(mx.float32).mean(axis=0)


@dataclass
class Probe:
    """Logistic regression on standardised pooled features of one fast model."""

    weight: mx.array  # [F]
    bias: mx.array  # [1]
    feature_mean: mx.array  # [F]
    feature_std: mx.array  # [F]
    canary_features: mx.array  # [F] pooled features of CANARY_PROMPT on the model trained on
    layer_ids: List[int]
    hidden_size: int
    num_layers: int
    vocab_size: int

    @property
    def num_features(self) -> int:
        return (1 + len(self.layer_ids)) * self.hidden_size

    def logits(self, features: mx.array) -> mx.array:
        """Logit of P(expert) for features [..., F]."""
        return ((features - self.feature_mean) / self.feature_std) @ self.weight + self.bias[0]

    def check_fits(self, fast: FastModel) -> None:
        adapter = fast.adapter
        if self.hidden_size != adapter.hidden_size:
            raise DFlashError(
                f"the router probe was trained for a model of hidden size {self.hidden_size}; "
                f"the fast model's is {adapter.hidden_size} (train one for it with dflash-train-router)"
            )
        if (self.num_layers, self.vocab_size) != (adapter.num_layers, adapter.vocab_size):
            raise DFlashError(
                f"the router probe was trained for a model of {self.num_layers} layers and {self.vocab_size} "
                f"tokens; the fast model has {adapter.num_layers} and {adapter.vocab_size} "
                "(train one for it with dflash-train-router)"
            )
        canary = pooled_features(fast, CANARY_PROMPT, self.layer_ids)
        drift = (mx.linalg.norm(canary - self.canary_features) / mx.linalg.norm(self.canary_features)).item()
        if not drift <= CANARY_TOLERANCE:
            raise DFlashError(
                f"the router probe was trained on another model: the fast model's hidden states on a reference "
                f"prompt differ by {drift:.0%} (train one for it with dflash-train-router)"
            )

    def save(self, path) -> None:
        """One safetensors file; the configuration rides in its metadata."""
        metadata = {
            "format": PROBE_FORMAT,
            "layer_ids": json.dumps(self.layer_ids),
            "hidden_size": str(self.hidden_size),
            "num_layers": str(self.num_layers),
            "vocab_size": str(self.vocab_size),
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tensors = dict(
            weight=self.weight,
            bias=self.bias,
            feature_mean=self.feature_mean,
            feature_std=self.feature_std,
            canary_features=self.canary_features,
        )
        mx.save_safetensors(str(path), tensors, metadata=metadata)


def load_probe(path) -> Probe:
    path = Path(path)
    if not path.is_file():
        raise DFlashError(
            f"router probe '{path}' not found (train one with dflash-train-router, or route by the guardrails alone)"
        )
    try:
        tensors, metadata = mx.load(str(path), return_metadata=True)
    except Exception as e:
        raise DFlashError(f"cannot read router probe {path}: {type(e).__name__}: {e}") from None
    if metadata.get("format") != PROBE_FORMAT:
        raise DFlashError(f"{path} is not a router probe (no '{PROBE_FORMAT}' format tag in its metadata)")
    try:
        probe = Probe(
            weight=tensors["weight"],
            bias=tensors["bias"],
            feature_mean=tensors["feature_mean"],
            feature_std=tensors["feature_std"],
            canary_features=tensors["canary_features"],
            layer_ids=[int(i) for i in json.loads(metadata["layer_ids"])],
            hidden_size=int(metadata["hidden_size"]),
            num_layers=int(metadata["num_layers"]),
            vocab_size=int(metadata["vocab_size"]),
        )
    except (KeyError, ValueError, TypeError) as e:
        raise DFlashError(f"router probe {path} is incomplete or corrupt: {type(e).__name__}: {e}") from None
    vectors = (probe.weight, probe.feature_mean, probe.feature_std, probe.canary_features)
    if any(v.shape != (probe.num_features,) for v in vectors) or probe.bias.shape != (1,):
        raise DFlashError(f"router probe {path} has tensors of the wrong shape for its metadata")
    return probe


class ProbePolicy(ScoringPolicy):
    name = "probe"

    def __init__(self, probe: Probe, fast: FastModel, threshold: float = DEFAULT_THRESHOLD):
        super().__init__(threshold)
        probe.check_fits(fast)
        self.probe, self.fast = probe, fast

    def expert_probability(self, prompt: str) -> float:
        features = pooled_features(self.fast, prompt, self.probe.layer_ids)
        return mx.sigmoid(self.probe.logits(features)).item()
