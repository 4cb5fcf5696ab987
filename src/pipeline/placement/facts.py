"""What the model needs beyond its weights: the sizes every device's reserves are computed from.

    quant state   NF4/FP4 block constants (double quantisation: 1/64 + 4/16384 bytes per weight), int8 row scales
    KV cache      keys and values of the layers on that device, for batch_size x max_seq_len tokens
                  (sliding-window layers hold at most their window)
    activations   estimated peak of one decoder layer's forward pass over a batch: 4 hidden-size copies, the MLP's
                  gate/up/product (3 x intermediate size) and the q/k/v projections
    logits        the last position's logits over the vocabulary, in the model dtype, in float32 and after
                  log-softmax (on the device holding lm_head)
    qmm workspace NF4: the largest layer's weight de-quantised for a matmul; int8: the temporaries of
                  bitsandbytes' mixed int8 matmul when every input column holds an outlier (see `int8_workspace`)

`ModelFacts.of` derives them once from the meta model and its config; `budget.account` puts them on devices. The
CUDA context and the margin are per device, not per model: they come from the placement config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import PrecisionName
from ..models import Precision


@dataclass(frozen=True)
class Workload:
    """What one forward pass of the judge holds: `batch_size` rows of up to `seq_len` tokens."""

    batch_size: int
    seq_len: int


def module_name(model, module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def decoder_layer_names(model) -> list[str]:
    """Names of the text decoder's layers (the ones with a KV cache), e.g. 'model.layers.0'."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is not None and hasattr(decoder, "layers"):
        base = module_name(model, decoder)
        return [f"{base}.layers.{i}" if base else f"layers.{i}" for i in range(len(decoder.layers))]
    classes = set(model._no_split_modules or ())
    return [n for n, m in model.named_modules() if type(m).__name__ in classes and "vision" not in n]


@dataclass(frozen=True)
class QuantFacts:
    """Quantisation state per quantised parameter, and the workspace one quantised matmul needs."""

    state_bytes: dict[str, int]  # param name -> quant-state bytes
    workspace: int

    @classmethod
    def of(cls, model, precision: Precision, quantizer, tokens: int, width: int) -> "QuantFacts":
        state: dict[str, int] = {}
        largest = int8_peak = 0
        int8 = precision.name == PrecisionName.int8
        if quantizer is not None:
            for name, p in model.named_parameters():
                if not quantizer.param_needs_quantization(model, name):
                    continue
                numel = p.numel()
                if int8:
                    out_features = p.shape[0]
                    state[name] = 4 * out_features  # float32 scale per output row
                    int8_peak = max(int8_peak, int8_workspace(tokens, numel // out_features, out_features))
                elif precision.double_quant:  # 8-bit absmax per 64 weights, float32 per 256 absmax blocks
                    state[name] = math.ceil(numel / 64) + 4 * math.ceil(numel / (64 * 256))
                else:  # float32 absmax per 64 weights
                    state[name] = 4 * math.ceil(numel / 64)
                largest = max(largest, numel)
        workspace = int8_peak if int8 else largest * width
        return cls(state, workspace)


def int8_workspace(tokens: int, in_features: int, out_features: int) -> int:
    """Bytes one bitsandbytes LLM.int8 matmul holds beyond its input and its weights, at its worst.

    Input columns with a value past the outlier threshold are computed in 16 bits from de-quantised weight columns.
    How many there are depends on the data: a few in a trained model's attention inputs, and nearly all of them in
    an MLP's down projection on the GPU check's random-weight 70B (its peak allocation exceeded the earlier
    estimate, int8 inputs and int32 outputs only, by 1.2 GB). So this counts every column as an outlier; the
    largest of the three phases:
      quantising the input   a float16 copy, the outlier mask, the masked copy, the int8 result   6 x tokens x in
      de-quantising columns  int8 result and outlier inputs (1 + 2 per input value), the weight columns' int8 copy,
                             float32 and compute-dtype versions (1 + 4 + 2 per weight)          3 x tokens x in + 7 x w
      the matmul             the same inputs, the 16-bit columns (2 per weight), int32 product, float16 and
                             compute-dtype outputs and the added outliers' result (8 per output)  + 2 x w + 8 x out
    """
    t, i, o = tokens, in_features, out_features
    return max(6 * t * i, 3 * t * i + 7 * o * i, 3 * t * i + 2 * o * i + 8 * t * o)


@dataclass
class ModelFacts:
    """Sizes the reserves are computed from, derived once from the meta model and its config."""

    decoder_layers: list[str]
    kv_bytes: dict[str, int]  # per decoder layer
    activation_bytes: int  # per device that runs decoder layers
    logits_bytes: int
    lm_head: str
    quantized: dict[str, int]  # param name -> quant-state bytes
    qmm_workspace: int

    @classmethod
    def of(cls, model, model_config, precision: Precision, quantizer, work: Workload) -> "ModelFacts":
        text = model_config.get_text_config()
        hidden, inter = text.hidden_size, text.intermediate_size
        heads = text.num_attention_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        head_dim = getattr(text, "head_dim", None) or hidden // heads
        width = torch.tensor([], dtype=precision.dtype).element_size()
        layers = decoder_layer_names(model)
        types = getattr(text, "layer_types", None) or ["full_attention"] * len(layers)
        window = getattr(text, "sliding_window", None)
        kv = {}
        for name, kind in zip(layers, types):
            tokens = min(work.seq_len, window) if kind == "sliding_attention" and window else work.seq_len
            kv[name] = 2 * work.batch_size * tokens * kv_heads * head_dim * width
        tokens = work.batch_size * work.seq_len
        activations = tokens * (4 * hidden + 3 * inter + (heads + 2 * kv_heads) * head_dim) * width
        vocab = model.get_output_embeddings().weight.shape[0]
        logits = work.batch_size * vocab * (width + 4 + 4)
        quant = QuantFacts.of(model, precision, quantizer, tokens, width)
        lm_head = module_name(model, model.get_output_embeddings())
        return cls(layers, kv, activations, logits, lm_head, quant.state_bytes, quant.workspace)
