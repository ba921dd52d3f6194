"""Vision graphs per patch grid (engine/vision_graphs.py): captured while the engine is idle, replayed for
later images of the grid with the eager encoder's output; the idle hook never delays a request."""

from __future__ import annotations

import threading

import pytest
import torch

from pixdesk.engine.sampling import SamplingParams

from .helpers import Run, engine, user


def test_idle_work_runs_when_nothing_is_queued_and_requests_still_run(tiny):
    with engine(tiny, max_batch=2) as eng:
        prefiller = eng.scheduler.prefiller
        assert prefiller.vision is None and not prefiller.has_idle_work()  # CPU: no graphs
        done = threading.Event()
        calls = []

        def idle_work():
            calls.append(1)
            done.set()

        prefiller.has_idle_work = lambda: not done.is_set()
        prefiller.idle_work = idle_work
        eng.scheduler.wake()
        assert done.wait(10)
        run = Run(eng.submit(eng.encode_chat([user("hello")]), SamplingParams(max_tokens=4)))
        run.wait()
    assert calls == [1] and run.finish.reason == "length"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_vision_graph_replays_the_eager_features_and_keeps_the_newest_grids(tiny_dir):
    from pixdesk.engine import vision_graphs
    from pixdesk.model.regions import CompiledBlocks
    from pixdesk.weights.checkpoint import load_checkpoint

    model = load_checkpoint(tiny_dir, dtype=torch.bfloat16, device="cuda").model
    graphs = vision_graphs.VisionGraphs(model, CompiledBlocks())
    graphs.queue_new_grids = True  # as after the engine's warm-up
    g = torch.Generator().manual_seed(0)
    sizes = [(32, 48), (48, 32), (64, 64)]
    with torch.inference_mode():
        for h, w in sizes:
            a, b = torch.randn(3, h, w, generator=g), torch.randn(3, h, w, generator=g)
            first = graphs.encode(a)  # eager, queued
            assert graphs.pending[-1] == graphs.key(a) and graphs.capture_pending()
            replayed, eager = graphs.encode(b), model.encode_images([b], graphs.blocks)
            torch.testing.assert_close(replayed, eager, atol=0, rtol=0)  # the same kernels, replayed
            assert not torch.equal(first, replayed)
    assert graphs.replays == len(sizes)
    kept = sizes[-vision_graphs.MAX_GRIDS :]
    assert list(graphs.graphs) == [graphs.key(torch.zeros(3, h, w)) for h, w in kept]
