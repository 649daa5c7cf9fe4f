"""Frozen configuration records: one per catalog model, passed down explicitly."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """One entry of `models.yaml`.

    `source` is `package:<python package>` (a folder shipped inside an installed package,
    located with `importlib.util.find_spec` without importing it), `hf:<repo id>` (the local
    Hugging Face cache, or the hub when the network is allowed) or a path to a local Hugging
    Face model directory. `gguf_file` names a GGUF file inside that folder; it is dequantized
    once and cached as safetensors. With `assemble`, the package's `assemble(path)` writes the
    GGUF file (split over several packages) into the cache first. `subfolder` is the model's
    folder inside the source (e.g. `model` for a package that ships it there).

    `task` is what the model serves: `generate` (chat and completions) or `embed` (embeddings,
    through `engine.embed`). An embedding model's `pooling` and `normalize` default to its
    sentence-transformers files (`modules.json`, `1_Pooling/config.json`); a source without them
    (e.g. a causal LM) must name its `pooling`. `matryoshka` says the model was trained so that
    its first k dimensions are an embedding too, which allows a request's `dimensions`.
    """

    id: str
    source: str
    aliases: tuple[str, ...] = ()
    gguf_file: str | None = None
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cuda | mps | cpu
    device_map: str | None = None  # e.g. "auto": accelerate spreads the weights over the devices
    # prompt + completion tokens per sequence; None = the model's max_position_embeddings, capped
    # by the KV cache's budget (resolved when the engine loads: `Engine.config` holds the number)
    max_context: int | None = None
    max_batch_size: int = 32  # running sequences at most (the KV cache is sized by kv_cache_tokens)
    # the KV cache's budget in tokens, shared by all sequences; None = from the device (engine.catalog.memory)
    kv_cache_tokens: int | None = None
    prefix_cache: bool = True  # keep finished sequences' KV blocks for later prompts (engine.core.blocks)
    max_waiting: int = 256  # queued requests beyond the running ones
    prefill_chunk: int = 256  # prompt tokens processed per engine step
    chat_template: str | None = None  # overrides the tokenizer's template
    eos_token_ids: tuple[int, ...] = ()  # added to the tokenizer's eos id
    threads: int = 0  # torch intra-op threads on CPU; 0 = all cores
    owned_by: str = "hearth"
    assemble: bool = False  # gguf_file is written by the source package's assemble(path)
    load: str = "lazy"  # lazy (on its first request) | eager (at start-up)
    idle_unload_s: float | None = None  # unload after this long without requests; None = never
    # auto | none | int8 | int4 | gguf. auto: gguf (the file's own blocks, engine.model.gguf_weights)
    # for a GGUF source on a CPU with dtype auto, else none. int8/int4: weight-only, torchao (engine.quantize)
    quantization: str = "auto"
    gpu_memory_utilization: float = 0.9  # share of free GPU memory the KV cache may take (engine.memory)
    cuda_graphs: bool = True  # on CUDA, replay decode steps from captured graphs (engine.cuda_graphs)
    cpu_graphs: bool = True  # on CPU, lean-path models replay small decode steps from traces (same)
    task: str = "generate"  # generate | embed
    subfolder: str | None = None  # the model's folder inside `source`
    pooling: str | None = None  # embed: mean | cls | last; None = from the sentence-transformers files
    normalize: bool | None = None  # embed: L2-normalize; None = from modules.json (true without it)
    matryoshka: bool = False  # embed: a request's `dimensions` may truncate (then renormalize)

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"model {self.id!r}: dtype must be auto, float32, bfloat16 or float16")
        if self.device not in ("auto", "cuda", "mps", "cpu"):
            raise ValueError(f"model {self.id!r}: device must be auto, cuda, mps or cpu")
        if self.quantization not in ("auto", "none", "int8", "int4", "gguf"):
            raise ValueError(f"model {self.id!r}: quantization must be auto, none, int8, int4 or gguf")
        if self.quantization == "gguf" and self.gguf_file is None:
            raise ValueError(f"model {self.id!r}: quantization gguf needs a gguf_file")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"model {self.id!r}: gpu_memory_utilization must be > 0 and <= 1")
        if self.load not in ("lazy", "eager"):
            raise ValueError(f"model {self.id!r}: load must be lazy or eager")
        if self.idle_unload_s is not None and not self.idle_unload_s > 0:
            raise ValueError(f"model {self.id!r}: idle_unload_s must be > 0 seconds (or null: never)")
        if self.assemble and (self.gguf_file is None or not self.source.startswith("package:")):
            raise ValueError(f"model {self.id!r}: assemble needs a package: source and a gguf_file")
        for name in ("max_context", "max_batch_size", "prefill_chunk"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"model {self.id!r}: {name} must be >= 1")
        if self.kv_cache_tokens is not None and self.kv_cache_tokens < 1:
            raise ValueError(f"model {self.id!r}: kv_cache_tokens must be >= 1 (or null: from the device)")
        if self.max_waiting < 0:
            raise ValueError(f"model {self.id!r}: max_waiting must be >= 0")
        self._check_task()

    def _check_task(self) -> None:
        if self.task not in ("generate", "embed"):
            raise ValueError(f"model {self.id!r}: task must be generate or embed")
        if self.pooling not in (None, "mean", "cls", "last"):
            raise ValueError(f"model {self.id!r}: pooling must be mean, cls or last")
        if self.task == "embed":
            if self.quantization not in ("auto", "none"):
                message = f"model {self.id!r}: quantization must be auto or none for a task: embed model"
                raise ValueError(message)
            if self.device_map is not None:
                raise ValueError(f"model {self.id!r}: device_map is not supported for a task: embed model")
            return
        for name in ("pooling", "normalize"):
            if getattr(self, name) is not None:
                raise ValueError(f"model {self.id!r}: {name} applies only to task: embed models")
        if self.matryoshka:
            raise ValueError(f"model {self.id!r}: matryoshka applies only to task: embed models")

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)
