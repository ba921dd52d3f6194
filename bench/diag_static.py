"""Diagnose the compiled static decode step on a GPU with a small random model (prints tracebacks)."""

import time
import traceback

import torch

from bench.gpu_model import random_model
from pixdesk.engine.cache import KVCache
from pixdesk.engine.generate import decode_step
from pixdesk.engine.static import StaticDecoder
from pixdesk.weights.tiny import TINY_ARGS

m = random_model(TINY_ARGS, torch.bfloat16, "cuda").fuse_projections()
kv, kv2 = KVCache.for_model(m, 2, 1000), KVCache.for_model(m, 2, 1000)
sd = StaticDecoder(m, kv, compile=True, bucket_size=256)


def run():
    for i, p in enumerate([5, 6, 300, 301, 302]):
        t = time.time()
        try:
            with torch.inference_mode():
                a = sd.step(torch.tensor([0]), torch.tensor([1500]), torch.tensor([p]))
                b = decode_step(m, kv2, torch.tensor([0]), torch.tensor([1500]), torch.tensor([p]))
            print(i, p, "ok", float((a - b).abs().max()), f"{time.time() - t:.2f}s", flush=True)
        except Exception:
            traceback.print_exc()
            break


import threading  # noqa: E402

th = threading.Thread(target=run)  # the engine's worker is a thread: test there
th.start()
th.join()
