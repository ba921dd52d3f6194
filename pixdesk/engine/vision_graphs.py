"""The vision encoder and adapter of one image replayed as a CUDA graph per patch grid.

The encoder's compiled regions (model/regions.py) are launch-bound: on an H200 a 1024x1024 image (64 x 64
patches, 24 layers) took 22.0 ms from Python for 11.9 ms of GPU work (bench/profile_prefill.py, session 9),
and the decoder's prefill cannot start before it ends. Screenshots from one screen share their grid, so the
engine keeps a graph per grid:
- the first image of a grid runs the regions eagerly (the request never waits for a capture) and queues
  the grid;
- the engine captures queued grids when it has nothing else to do (`capture_pending`, called from the
  scheduler's idle loop);
- later images of that grid copy their pixels into the graph's input buffer and replay it.
At most MAX_GRIDS graphs are kept (least recently used out), each with its own memory pool (~0.1-0.2 GB
for the largest grid), and a capture happens only while MIN_FREE_BYTES stay free on the device. A capture
that fails is logged and that grid stays eager.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch

from pixdesk.devices import free_device_bytes
from pixdesk.engine.static import capture
from pixdesk.model.regions import CompiledBlocks

log = logging.getLogger("pixdesk.engine")

MAX_GRIDS = 2
MIN_FREE_BYTES = 2 * 2**30


class VisionGraphs:
    def __init__(self, model, blocks: CompiledBlocks):
        self.model, self.blocks = model, blocks
        # grid key -> (graph, its pixel input, its feature output)
        self.graphs: OrderedDict[tuple, tuple] = OrderedDict()
        self.pending: list[tuple] = []
        self.eager_only: set[tuple] = set()  # grids whose capture failed or did not fit
        self.replays = 0
        # Off during the engine's warm-up: its tiny image is no grid a user sends, and a capture on the idle
        # engine thread must not overlap the warm-up's own kernel launches from the caller's thread.
        self.queue_new_grids = False

    @staticmethod
    def key(pixels: torch.Tensor) -> tuple:
        return (*pixels.shape, pixels.dtype)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """One image's pixels (3, H, W) -> its adapter outputs (patches, dim), as model.encode_images."""
        key = self.key(pixels)
        found = self.graphs.get(key)
        if found is None:
            if self.queue_new_grids and key not in self.eager_only and key not in self.pending:
                self.pending.append(key)
            return self.model.encode_images([pixels], self.blocks)
        graph, pixels_in, feats_out = found
        self.graphs.move_to_end(key)
        pixels_in.copy_(pixels, non_blocking=True)
        graph.replay()
        self.replays += 1
        return feats_out.clone()  # the feature cache keeps it; the next replay rewrites feats_out

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_images([pixels], self.blocks)

    def capture_pending(self) -> bool:
        """Capture one queued grid; False when there was none. Runs where nothing else uses the device."""
        if not self.pending:
            return False
        key = self.pending.pop(0)
        device = self.model.device
        if free_device_bytes(device) < MIN_FREE_BYTES:
            self.eager_only.add(key)
            log.info("vision graph for %s not captured: less than %d GiB free", key[:3], MIN_FREE_BYTES >> 30)
            return True
        pixels_in = torch.zeros(key[:3], dtype=key[3], device=device)
        try:
            with torch.inference_mode():
                # thread_local: an HTTP thread touching the device meanwhile is no capture error
                graph, feats = capture(self._encode, (pixels_in,), None, "thread_local")
        except torch.OutOfMemoryError:
            self.eager_only.add(key)
            torch.cuda.empty_cache()
            return True
        except Exception:  # the eager regions still work: keep them for this grid
            log.exception("vision graph capture failed for %s; that image size stays eager", key[:3])
            self.eager_only.add(key)
            return True
        self.graphs[key] = (graph, pixels_in, feats)
        while len(self.graphs) > MAX_GRIDS:
            self.graphs.popitem(last=False)
        return True
