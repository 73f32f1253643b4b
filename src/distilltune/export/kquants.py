"""Per-tensor GGUF quantization: which type each tensor gets, and the k-quant encoders gguf lacks.

The ``gguf`` package encodes Q8_0 / Q5_0 in numpy but can only *decode* the k-quants (Q4_K, Q6_K)
that a ``q4_k_m`` file is made of. We encode them here from the block layout (the same layout
``gguf.quants`` decodes, which the tests use as the reference). The scales come from each
sub-block's range (Q4_K: scale and offset per 32 values; Q6_K: a signed scale per 16), not from
llama.cpp's iterative error search, so a file is valid and loads anywhere but its error is a little
above what ``llama-quantize`` reaches; ``export.json`` reports the round-trip agreement either way.

The q4_k_m recipe: Q6_K for the output head (the tied embedding when there is none) and for
``attn_v`` / ``ffn_down`` in the first and last eighth of the layers and every third layer between;
Q4_K elsewhere. K-quants need rows that are a multiple of 256 values; other rows fall back as in
llama.cpp (Q4_K → Q5_0, Q6_K → Q8_0, then F16), and the report counts them.
"""

from __future__ import annotations

import numpy as np

QK_K = 256


def _more_bits(layer: int, n_layers: int) -> bool:
    eighth = n_layers // 8
    return layer < eighth or layer >= 7 * n_layers // 8 or (layer - eighth) % 3 == 2


def plan_q4_k_m(names: list[str], n_layers: int) -> dict:
    """GGUF tensor name → the k-quant type q4_k_m gives it (2-D weights only; norms stay F32)."""
    from gguf import GGMLQuantizationType as T

    head = "output.weight" if "output.weight" in names else "token_embd.weight"
    plan = {}
    for name in names:
        kind = name.split(".")[-2] if name.startswith("blk.") else name
        sensitive = kind in ("attn_v", "ffn_down") and _more_bits(int(name.split(".")[1]), n_layers)
        plan[name] = T.Q6_K if name == head or sensitive else T.Q4_K
    return plan


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16)


def quantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    """(n, 256) float32 → (n, 144) uint8 Q4_K blocks: x ≈ d·sc_j·q − dmin·m_j over 8 sub-blocks of 32."""
    n = blocks.shape[0]
    sub = blocks.reshape(n, 8, 32)
    lo = np.minimum(sub.min(axis=-1), 0.0)
    hi = sub.max(axis=-1)
    scale = (hi - lo) / 15.0
    offset = -lo
    d = _f16(scale.max(axis=-1) / 63.0)
    dmin = _f16(offset.max(axis=-1) / 63.0)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.rint(scale / d32), 0).clip(0, 63).astype(np.uint8)
        mn = np.where(dmin32 > 0, np.rint(offset / dmin32), 0).clip(0, 63).astype(np.uint8)
        step = (d32 * sc)[..., None]
        q = np.where(step > 0, np.rint((sub + (dmin32 * mn)[..., None]) / step), 0)
    q = q.clip(0, 15).astype(np.uint8)
    scales = np.zeros((n, 12), dtype=np.uint8)
    scales[:, 0:4] = (sc[:, :4] & 0x3F) | ((sc[:, 4:] >> 4) << 6)
    scales[:, 4:8] = (mn[:, :4] & 0x3F) | ((mn[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    pairs = q.reshape(n, 4, 2, 32)
    qs = (pairs[:, :, 0, :] | (pairs[:, :, 1, :] << 4)).reshape(n, 128)
    return np.concatenate(
        [d.reshape(n, 1).view(np.uint8), dmin.reshape(n, 1).view(np.uint8), scales, qs], axis=1
    )


def quantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    """(n, 256) float32 → (n, 210) uint8 Q6_K blocks: x ≈ d·sc_s·(q − 32) over 16 sub-blocks of 16."""
    n = blocks.shape[0]
    sub = blocks.reshape(n, 16, 16)
    scale = np.abs(sub).max(axis=-1) / 31.0
    d = _f16(scale.max(axis=-1) / 127.0)
    d32 = d.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.rint(scale / d32), 0).clip(-128, 127).astype(np.int8)
        step = (d32 * sc.astype(np.float32))[..., None]
        q = np.where(step > 0, np.rint(sub / step), 0)
    q = (q.clip(-32, 31) + 32).astype(np.uint8).reshape(n, 2, 4, 32)  # half, quarter, lane
    ql = np.concatenate(
        [(q[:, :, 0] & 0x0F) | ((q[:, :, 2] & 0x0F) << 4), (q[:, :, 1] & 0x0F) | ((q[:, :, 3] & 0x0F) << 4)],
        axis=-1,
    ).reshape(n, 128)
    qh = ((q >> 4) & 0x03) << np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    qh = np.bitwise_or.reduce(qh, axis=2).reshape(n, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), d.reshape(n, 1).view(np.uint8)], axis=1)


_ENCODERS = {"Q4_K": quantize_q4_k, "Q6_K": quantize_q6_k}


def _encode_k(arr: np.ndarray, qtype) -> np.ndarray:
    rows = arr.reshape(-1, arr.shape[-1]).astype(np.float32)
    blocks = _ENCODERS[qtype.name](rows.reshape(-1, QK_K))
    return blocks.reshape(*arr.shape[:-1], (arr.shape[-1] // QK_K) * blocks.shape[-1])


def _fallback(qtype, row: int):
    """llama.cpp's replacement when a row does not fill whole blocks of ``qtype``."""
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as T

    chain = {T.Q4_K: (T.Q5_0, T.F16), T.Q6_K: (T.Q8_0, T.F16), T.Q8_0: (T.F16,)}
    for cand in (qtype, *chain.get(qtype, ())):
        if row % GGML_QUANT_SIZES[cand][0] == 0:
            return cand
    return T.F16


def quantize_tensor(arr: np.ndarray, quant: str, planned=None):
    """Encode one tensor for ``quant``: returns (data for GGUFWriter, the type used, the type wanted).

    1-D tensors (norms) stay F32 at every level, as llama.cpp expects."""
    import gguf
    from gguf import GGMLQuantizationType as T

    if arr.ndim == 1 or quant == "none":
        return arr.astype(np.float32), T.F32, None
    if quant == "f16":
        return arr.astype(np.float16), T.F16, None
    wanted = T.Q8_0 if quant == "q8_0" else planned
    if wanted is None:
        raise ValueError(f"no quantization planned for a tensor at {quant}")
    qtype = _fallback(wanted, arr.shape[-1])
    if qtype == T.F16:
        return arr.astype(np.float16), qtype, wanted
    if qtype.name in _ENCODERS:
        return _encode_k(arr, qtype), qtype, wanted
    return gguf.quants.quantize(arr.astype(np.float32), qtype), qtype, wanted
