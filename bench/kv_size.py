"""KV-cache size: measured from a cache's tensors, and predicted from the model config.

For a decoder with full attention in every layer the cache holds one key and one
value vector per layer, KV head and token, so

    bytes = 2 x num_hidden_layers x num_key_value_heads x head_dim x tokens x dtype bytes

with ``head_dim = config.head_dim`` when the config has it, else
``hidden_size / num_attention_heads``. ``cache_bytes`` sums ``numel x element_size``
of every layer's ``keys`` and ``values`` (transformers 5's ``DynamicCache``:
``cache.layers[i].keys`` of shape ``[batch, kv_heads, tokens, head_dim]``), so the
two agree exactly for such models; sliding-window or compressed-KV models keep
less than the formula says and report the difference rather than fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class KVShape:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype_bytes: int

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    def bytes_for(self, tokens: int) -> int:
        return self.bytes_per_token * tokens


def kv_shape(config: Any, *, dtype_bytes: int) -> KVShape:
    """The cache geometry of a transformers ``PretrainedConfig`` (its text part)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(text.num_attention_heads)
    # Older configs leave num_key_value_heads unset for plain multi-head attention.
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return KVShape(num_layers=int(text.num_hidden_layers), num_kv_heads=kv_heads,
                   head_dim=int(head_dim), dtype_bytes=dtype_bytes)


def cache_bytes(cache: Any) -> int:
    """Bytes held by the key and value tensors of a transformers ``Cache``."""
    total = 0
    for layer in getattr(cache, "layers", ()):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
    return total
