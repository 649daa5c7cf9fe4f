"""Weight-only quantization of a loaded model's linear layers, through torchao.

`quantization` in `models.yaml`: `none`, `int8` (per-row symmetric int8 weights) or `int4`
(groups of `INT4_GROUP` weights sharing a scale and zero point, fitted by HQQ). torchao does the quantizing
and owns the tensor types; the products run on kernels that ship inside torch itself:

- CPU int4: torchao's `Int4OpaqueTensor`, turned into an `Int4Linear` that calls
  `aten._weight_int4pack_mm_for_cpu` (no tensor-subclass dispatch in Python on every call).
- CPU int8: torchao's per-row `Int8Tensor`, turned into an `Int8Linear` that calls
  `aten._weight_int8pack_mm` (torchao's own eager path casts the weight back on every call).
- CUDA int4: torchao's tinygemm layout (`aten._weight_int4pack_mm`, compute capability >= 8.0);
  CUDA int8: torchao's `Int8Tensor`.

Both CPU kernels are fast only with bfloat16 activations (measured on AVX-512: float32
activations take a scalar path, 15-60x slower than bfloat16), so a quantized model runs in
bfloat16: `dtype: auto` picks it (see `engine.model.loader.pick_dtype`), and any other dtype is refused.
Every `nn.Linear` is quantized, `lm_head` included (at one stream its 49152 x 576 product is a
fifth of the work); a model with tied embeddings keeps its input embedding in bfloat16.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import torch
from torch import nn

from engine.catalog.memory import release_memory
from engine.model.packed_linear import QUANTIZED_LINEARS, Int4Linear, Int8Linear, act_group, is_plain_linear

SETTINGS = ("none", "int8", "int4", "gguf")  # gguf: a GGUF file's own blocks (engine.model.gguf_weights)
# int4: weights per scale (must divide in_features: 576 and 1536 for SmolLM2) and how scales are
# fitted. Measured on tests/data/perplexity.txt: group 64 costs +34 % perplexity (min-max) or
# +20 % (HQQ), group 32 +8 % (min-max) or +6 % (HQQ).
INT4_GROUP = 32
INT4_QPARAMS = "hqq"  # torchao's half-quadratic fit; "tinygemm" is plain min-max

_log = logging.getLogger("hearth.quantize")


class QuantizationError(ValueError):
    """The model's `quantization` cannot run on its device or dtype; the message says what to use."""


def check(setting: str, device: torch.device, dtype: torch.dtype) -> None:
    """Raise `QuantizationError` when `setting` cannot run on `device` with `dtype` activations."""
    if setting not in SETTINGS:
        raise QuantizationError(f"quantization {setting!r} is unknown; use one of {', '.join(SETTINGS)}")
    try:
        quiet_torchao_import()  # transformers imports torchao at load when installed: once, quietly
    except ImportError as e:
        if setting == "none":
            return
        message = f"quantization {setting!r} needs torchao ({e}); install it or use quantization: none"
        raise QuantizationError(message) from e
    if setting == "none":
        return
    if setting == "gguf" and device.type != "cpu":
        raise QuantizationError(
            f"quantization 'gguf' runs on a CPU, not {device.type}; use quantization: none (the file "
            "dequantized to dtype) or int8/int4 there"
        )
    if device.type not in ("cpu", "cuda"):
        raise QuantizationError(
            f"quantization {setting!r} is not supported on {device.type}; use quantization: none there"
        )
    if dtype != torch.bfloat16:
        raise QuantizationError(
            f"quantization {setting!r} runs with bfloat16 activations, not "
            f"{str(dtype).removeprefix('torch.')}; set dtype: auto (or bfloat16), "
            "or quantization: none to keep this dtype"
        )
    if setting == "int4" and device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            raise QuantizationError(
                f"quantization 'int4' needs a CUDA GPU of compute capability >= 8.0 "
                f"(this one is {major}.{minor}); use quantization: int8 instead"
            )
    cpu_int4 = hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
    if setting == "int4" and device.type == "cpu" and not cpu_int4:
        raise QuantizationError(
            f"quantization 'int4' needs torch's CPU int4 kernel, missing from torch {torch.__version__}; "
            "use quantization: int8 instead"
        )


def quantize(model: nn.Module, setting: str, device: torch.device) -> int:
    """Quantize `model`'s linear layers in place (the model is already on `device`, in bfloat16).

    Returns how many layers were quantized; raises `QuantizationError` when `setting` cannot run here.
    """
    dtype = next(model.parameters()).dtype
    check(setting, device, dtype)
    if setting in ("none", "gguf"):  # gguf: quantized as it was read (engine.model.gguf_weights)
        return 0
    with _quiet_import():
        from torchao.quantization import quantize_

    config = _config(setting, device)
    before = _linears(model)
    quantize_(model, config, filter_fn=lambda mod, fqn: type(mod) is nn.Linear)
    if device.type == "cpu":
        _to_kernel_linears(model)
    done = before - _linears(model, plain_only=True)
    release_memory()  # the replaced full-precision weights go back to the OS
    _log.info("quantized %d of %d linear layers to %s (%s)", done, before, setting, device.type)
    return done


def _config(setting: str, device: torch.device) -> Any:
    with _quiet_import():
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
        from torchao.quantization.quantize_.workflows import Int4PackingFormat

        if setting == "int8":
            return Int8WeightOnlyConfig(set_inductor_config=False)
        if device.type == "cpu":
            from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig

            return PrototypeInt4WeightOnlyConfig(
                group_size=INT4_GROUP, int4_choose_qparams_algorithm=INT4_QPARAMS, set_inductor_config=False
            )
        return Int4WeightOnlyConfig(
            group_size=INT4_GROUP,
            int4_packing_format=Int4PackingFormat.TILE_PACKED_TO_4D,
            int4_choose_qparams_algorithm=INT4_QPARAMS,
            set_inductor_config=False,
        )


def _to_kernel_linears(model: nn.Module) -> None:
    """Replace every linear whose weight is a torchao CPU tensor (per-row `Int8Tensor`, or
    `Int4OpaqueTensor` in plain weight-only form) by an `Int8Linear` or `Int4Linear` over the same
    data, which calls torch's kernel directly and concatenates with its neighbours (engine.model.lean)."""
    for name, mod in list(model.named_modules()):
        weight = getattr(mod, "weight", None)
        if type(mod) is not nn.Linear or not hasattr(weight, "qdata"):
            continue
        assert weight is not None
        if hasattr(weight, "scale_and_zero"):
            weight_only = getattr(weight, "act_pre_scale", None) is None
            weight_only &= getattr(weight, "act_mapping_type", None) is None
            if not weight_only or weight.qdata.shape[0] != mod.out_features:
                continue  # padded or activation-scaled: torchao's own linear handles it
            group = weight.block_size[1]
            linear: nn.Module = Int4Linear(weight.qdata, weight.scale_and_zero, group, mod.bias)
        else:
            scale = weight.scale.reshape(-1)  # one a row
            linear = Int8Linear(weight.qdata, scale, mod.bias, act_group(name))
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, linear)


def _linears(model: nn.Module, plain_only: bool = False) -> int:
    return sum(
        1
        for mod in model.modules()
        if (is_plain_linear(mod) if plain_only else isinstance(mod, (nn.Linear, *QUANTIZED_LINEARS)))
    )


def quiet_torchao_import() -> None:
    """Import torchao, and transformers' torchao quantizer that imports more of it, with their
    warnings about CUDA-only extensions (absent on a CPU build) and pytree enums hidden."""
    with _quiet_import():
        import torchao  # noqa: F401

        with suppress(ImportError):
            import transformers.quantizers.quantizer_torchao  # noqa: F401


@contextmanager
def _quiet_import() -> Iterator[None]:
    """torchao logs a warning per CUDA-only extension it cannot load on a CPU build; hide them."""
    noisy = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in noisy]
    for log in noisy:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(noisy, levels, strict=True):
            log.setLevel(level)
