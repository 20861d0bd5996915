"""Is a version servable? Load it strictly and run one forward pass.

Checksums prove the files are the ones published, not that they are a working model: a version
whose safetensors hold tensors of the wrong shape (or none at all for a layer, which
`from_pretrained` would silently re-initialise at random) passes `Registry.verify`. Promotion
and the serving process both use these checks, so a version that cannot serve is refused before
the pointer moves and never crash-loops a fleet.

Messages name the version and what is wrong, never a server path or an exception type; the full
exception goes to the log.
"""

from __future__ import annotations

import gc
import logging
import threading

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

log = logging.getLogger(__name__)

PROBE_TEXT = "Hello, how can I help?"
PROBE_TOKENS = 8
# from_pretrained is not thread-safe (it patches torch's init functions process-wide while it
# builds a model: two loads at once can drop tied weights), so a process loads one model at a time.
LOAD_LOCK = threading.Lock()


class UnloadableVersion(RuntimeError):
    """A version whose files verify but which cannot be loaded or run as a model."""


def load_checked(path, version: str, device: torch.device, dtype: torch.dtype | str):
    """(model, tokenizer) from a Hugging Face directory; every weight must be in the checkpoint
    with the architecture's shape. Raises UnloadableVersion."""
    try:
        with LOAD_LOCK:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True,
                                                               ignore_mismatched_sizes=True)
    except Exception as exc:
        log.warning("version %s cannot be loaded", version, exc_info=True)
        raise UnloadableVersion(f"{version} cannot be loaded: its files are not a readable model") from exc
    bad = sorted(info.get("missing_keys") or []) + sorted(k[0] if isinstance(k, tuple) else k
                                                          for k in info.get("mismatched_keys") or [])
    if bad or info.get("error_msgs"):
        log.warning("version %s: loading report %s", version, info)
        raise UnloadableVersion(
            f"{version} cannot be loaded: {len(bad)} weight tensor(s) missing or of the wrong shape "
            f"(first: {bad[0] if bad else '-'})")
    return model.to(device).eval(), tokenizer


@torch.inference_mode()
def forward_check(model, tokenizer, version: str) -> None:
    """Runs the model once on a few tokens; logits must be finite and vocabulary-sized."""
    try:
        ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"][:PROBE_TOKENS] or [0]
        device = next(model.parameters()).device
        logits = model(input_ids=torch.tensor([ids], device=device)).logits  # (1, T, V)
    except Exception as exc:
        log.warning("version %s failed its forward pass", version, exc_info=True)
        raise UnloadableVersion(f"{version} cannot run: its forward pass failed") from exc
    if logits.shape[:2] != (1, len(ids)) or not torch.isfinite(logits).all():
        raise UnloadableVersion(f"{version} cannot run: its forward pass gives non-finite or misshapen logits")


def probe_version(registry, version: str, device: str | torch.device = "cpu") -> None:
    """Verifies checksums, loads strictly and runs one forward pass (blocking; frees the model).
    Raises InvalidVersionName, VersionNotFound, ChecksumError or UnloadableVersion."""
    registry.verify(version)
    # dtype "auto": the checkpoint's own (bf16 checkpoints stay bf16 on the CPU: half the memory)
    model, tokenizer = load_checked(registry.path(version), version, torch.device(device), "auto")
    try:
        forward_check(model, tokenizer, version)
    finally:
        del model
        gc.collect()
