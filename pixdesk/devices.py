"""Device facts shared by the engine's sizing and the model's layout choices."""

from __future__ import annotations

import torch


def free_device_bytes(device: torch.device) -> int:
    """Free memory on the card, or less where this process is capped (`set_per_process_memory_fraction`).

    Empties the allocator's cache first: blocks freed while loading and fusing stay reserved otherwise, and a
    12 GiB card then looked 1.3 GiB fuller than it was.
    """
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    return int(min(free, _fraction(device) * total - torch.cuda.memory_reserved(device)))


def total_device_bytes(device: torch.device) -> int:
    """The card's memory, or this process's share of it where capped."""
    return int(_fraction(device) * torch.cuda.get_device_properties(device).total_memory)


def _fraction(device: torch.device) -> float:
    """This process's cap on the card (`set_per_process_memory_fraction`), 1.0 where none is set."""
    return getattr(torch.cuda, "get_per_process_memory_fraction", lambda _device: 1.0)(device)
