"""Loading HF-named tensors into a running vLLM engine's model (the receiving end of a weight
sync), in place where the backend allows it.

vLLM's CPU backend post-processes every linear layer after loading
(`UnquantizedLinearMethod.process_weights_after_loading`): it packs the weight into a oneDNN
matmul handle, which holds its own copy, and replaces `layer.weight` with an empty tensor. A
plain `load_weights` then has nowhere to write. Two ways to load:

- **in place** (the CPU default): the first load gives each packed layer its loadable weight
  back (allocated once from the shape vLLM recorded at model build, in the layout its
  `weight_loader` writes: stacked qkv / gate_up, this rank's shard), `model.load_weights`
  writes the received tensors into the existing storage, and each layer is re-processed by
  its own quant method as soon as its weight is complete, so the packing of layer L overlaps
  the transfer of the next bucket. The old handle is dropped; nothing else is re-created.
  Costs the loadable weights' memory (about the model's size) kept between syncs.
- **layerwise** (vLLM's reload API): re-creates every layer's parameters, loads, re-processes,
  copies into the original storage. The fallback wherever in place is not known to be exact:
  GPUs (NCCL delivers into device memory and processing there keeps the weights; this path
  also keeps CUDA-graph references valid), quantized or fused layers (their processing changes
  layouts), LoRA-wrapped layers, a layer whose loadable shape vLLM did not record.

Both give the same handles from the same weights, so the engine's logprobs are bitwise the
same either way (tests/integration/test_weight_sync.py, its last test).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

INPLACE, LAYERWISE = "inplace", "layerwise"


def load_into_engine(
    model: torch.nn.Module,
    model_config,
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    layers: list[torch.nn.Module] | None = None,
) -> str:
    """Load `named_tensors` (HF names, as `model.load_weights` takes them) into `model`.
    `layers`: the modules that own the tensors when only some are sent (None: the whole
    model); the layerwise fallback reloads only those. Returns the path taken (INPLACE or
    LAYERWISE)."""
    scope = list(model.modules()) if layers is None else _with_children(layers)
    if in_place_supported(scope):
        load_in_place(model, named_tensors, scope)
        return INPLACE
    load_layerwise(model, model_config, named_tensors, [model] if layers is None else layers)
    return LAYERWISE


def in_place_supported(modules: list[torch.nn.Module]) -> bool:
    """True when every module's post-load processing is known: the CPU backend's unquantized
    linear / embedding methods (which only build the GEMM handle from the 2-D weight) or
    none, no LoRA wrappers, and vLLM recorded the loadable shape of each removed weight."""
    from vllm.lora.layers import BaseLayerWithLoRA
    from vllm.model_executor.layers.attention import is_deferred_attention_layer
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    known = (UnquantizedLinearMethod, UnquantizedEmbeddingMethod)
    for m in modules:
        if isinstance(m, BaseLayerWithLoRA):
            return False
        method = getattr(m, "quant_method", None)
        if is_deferred_attention_layer(m):
            # Processed after loading only for checkpoint scales; an unquantized model's
            # attention has no tensors to load and keeps its state.
            if any(True for _ in m.parameters(recurse=False)):
                return False
        elif method is not None:
            if type(method) not in known or _loadable_meta(m) is None:
                return False
    return True


def _with_children(layers: list[torch.nn.Module]) -> list[torch.nn.Module]:
    seen, out = set(), []
    for layer in layers:
        for m in layer.modules():
            if id(m) not in seen:
                seen.add(id(m))
                out.append(m)
    return out


def _loadable_meta(layer: torch.nn.Module):
    """The shape (a meta tensor with the weight's attributes) `layer.weight` is loaded in:
    the live weight where processing kept it, else what vLLM recorded at model build. None
    when neither is a 2-D weight."""
    weight = getattr(layer, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.numel() > 0:
        return weight if weight.ndim == 2 else None
    from vllm.model_executor.model_loader.reload.layerwise import get_layerwise_info

    meta = get_layerwise_info(layer).restore_metadata[0].get("weight")
    if meta is None or meta.ndim != 2 or meta.numel() == 0:
        return None
    return meta


def _stage(layer: torch.nn.Module) -> bool:
    """Give `layer` its loadable weight back if processing removed it. Returns True when the
    weight was freshly allocated (its content is undefined until fully loaded)."""
    weight = layer.weight
    if weight.numel() > 0:
        return False
    from vllm.model_executor.model_loader.reload.layerwise import (
        _get_original_loader,
        get_layerwise_info,
    )
    from vllm.model_executor.model_loader.reload.meta import materialize_meta_tensor
    from vllm.model_executor.model_loader.reload.sanitize import restore_layer_refs

    info = get_layerwise_info(layer)
    with info.restore_device:
        # A copy of the recorded tensor: its weight_loader is re-bound to the layer on the
        # copy only, so the record keeps no reference to its layer.
        staged = restore_layer_refs(materialize_meta_tensor(_loadable_meta(layer)), layer)
    # A layerwise reload leaves its deferring wrapper on the record's loader (which then
    # loads nothing once that reload has finished): load through the layer's own loader.
    staged.weight_loader = _get_original_loader(staged)
    staged.rlhf_staged = True  # see _unstage
    layer.weight = staged
    return True


def _unstage(layer: torch.nn.Module) -> None:
    """Undo _stage before a layerwise reload, which copies the processed (empty) weight
    back into the layer's current one."""
    weight = getattr(layer, "weight", None)
    if getattr(weight, "rlhf_staged", False):
        layer.weight = torch.nn.Parameter(
            torch.empty(0, dtype=weight.dtype, device=weight.device), requires_grad=False
        )


class _Tracker:
    """Counts the elements written into one layer's weight; re-processes the layer when it
    is complete, inside the load, so the processing overlaps the transfer still running."""

    def __init__(self, layer: torch.nn.Module, fresh: bool):
        self.layer, self.fresh = layer, fresh
        self.weight = layer.weight
        self.total = getattr(self.weight, "weight_loader_numel", self.weight.numel())
        self.loaded = 0
        self.processed = False
        self.original = getattr(self.weight, "weight_loader", None)

    def install(self) -> None:
        from vllm.model_executor.model_loader.reload.meta import CopyCounter
        from vllm.model_executor.model_loader.weight_utils import default_weight_loader

        original = self.original or default_weight_loader

        def counting_loader(*args, **kwargs):
            with CopyCounter() as counter:
                out = original(*args, **kwargs)
            self.loaded += counter.copied_numel
            if self.loaded >= self.total:
                self.process()
            return out

        self.weight.weight_loader = counting_loader

    def uninstall(self) -> None:
        if self.original is None:
            del self.weight.weight_loader
        else:
            self.weight.weight_loader = self.original

    def process(self) -> None:
        """Re-run the layer's own post-load processing (the backend's GEMM dispatch) and
        keep the loadable weight on the layer for the next load."""
        layer, weight = self.layer, self.weight
        layer.quant_method.process_weights_after_loading(layer)
        if layer.weight is not weight:
            if layer.weight.numel() != 0:  # not the known "packed and removed" outcome
                raise RuntimeError(f"{type(layer).__name__}: processing changed the weight")
            layer.weight = weight
        self.processed = True


def load_in_place(model, named_tensors, scope: list[torch.nn.Module]) -> None:
    """The in-place path; `scope`: every module that may receive a tensor (children
    included), all of them passing in_place_supported."""
    _reuse_freed_memory()
    trackers = [
        _Tracker(m, fresh=_stage(m))
        for m in scope
        if getattr(m, "quant_method", None) is not None and hasattr(m, "weight")
    ]
    for t in trackers:
        t.install()
    try:
        with torch.no_grad():
            model.load_weights(weights=named_tensors)
    finally:
        for t in trackers:
            t.uninstall()
    for t in trackers:
        if t.loaded and not t.processed:  # e.g. a padded vocab: fewer elements than the weight
            if t.fresh:
                raise RuntimeError(
                    f"{type(t.layer).__name__}: first load wrote {t.loaded} of "
                    f"{t.total} elements of a weight the engine no longer holds"
                )
            t.process()


_MALLOC_TUNED = False


def _reuse_freed_memory() -> None:
    """Every re-pack allocates a new handle (up to 4x the layer's weight) and frees the old
    one. glibc serves blocks above its mmap threshold (at most 32 MB by default) with fresh
    mappings and returns freed heap tops to the OS, so each sync page-faulted the handles' memory
    in again. Keeping freed memory in the engine process's heap lets the next sync reuse it:
    134M sync 0.52-0.56 s -> 0.39-0.49 s (docs/performance.md). The engine then holds its
    peak (one extra handle at most); once per process, glibc only."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: its defaults stay
        return
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 2**31 - 1)  # the largest int: keep what was freed


def load_layerwise(model, model_config, named_tensors, layers: list[torch.nn.Module]) -> None:
    """The fallback: vLLM's layerwise reload on `layers` (and their children)."""
    from vllm.model_executor.model_loader.reload import (
        finalize_layerwise_reload,
        initialize_layerwise_reload,
    )

    for layer in layers:
        for m in layer.modules():
            _unstage(m)
        initialize_layerwise_reload(layer)
    model.load_weights(weights=named_tensors)
    for layer in layers:
        finalize_layerwise_reload(layer, model_config)
