"""Profile the static decode step of the full-size model: graph replay time and the top kernels."""

import time

import torch

from bench.gpu_model import PIXTRAL_12B, random_model
from pixdesk.engine.cache import KVCache
from pixdesk.engine.static import StaticDecoder

m = random_model(PIXTRAL_12B, torch.bfloat16, "cuda").fuse_projections()
kv = KVCache.for_model(m, 1, 4352)
sd = StaticDecoder(m, kv)
slots, tok = torch.tensor([0]), torch.tensor([1500])
with torch.inference_mode():
    t = time.time()
    sd.step(slots, tok, torch.tensor([4200]))
    torch.cuda.synchronize()
    print(f"first step (compile + capture) {time.time() - t:.1f}s", flush=True)
    for _ in range(5):
        sd.step(slots, tok, torch.tensor([4201]))
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(50):
        sd.step(slots, tok, torch.tensor([4202 + i]))
    torch.cuda.synchronize()
    print(f"step() incl. host work: {(time.perf_counter() - t) / 50 * 1e3:.2f} ms", flush=True)
    graph, _ = sd.graphs[sd.bucket(4300)]
    t = time.perf_counter()
    for _ in range(50):
        graph.replay()
    torch.cuda.synchronize()
    print(f"graph replay only: {(time.perf_counter() - t) / 50 * 1e3:.2f} ms", flush=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            graph.replay()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15), flush=True)
