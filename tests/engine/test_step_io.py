"""The static step's inputs and picks through pinned memory (engine/step_io.py): the kernels and the host's
bookkeeping in Triton's interpreter, and on CUDA a pipelined greedy decode through replayed graphs that
matches the same decoder with a copy each way."""

from __future__ import annotations

import textwrap

import pytest
import torch

from tests.triton_interpreter import run_in_interpreter

HOST_SIDE = textwrap.dedent(
    """
    import torch
    from pixdesk.engine.step_io import StepIO
    io_rows = torch.zeros(4, 3, dtype=torch.long)
    device_picks = torch.zeros(3, dtype=torch.long)
    step_io = StepIO(3, torch.device("cpu"))

    def run_step(tokens, picks):
        k = step_io.begin()
        step_io.inputs.copy_(tokens)
        step_io.stage(k)
        step_io.load(io_rows)  # what the graph does first ...
        assert torch.equal(io_rows, tokens) and int(step_io.seq) == k and int(step_io.consumed) == k
        device_picks.copy_(torch.tensor(picks))
        step_io.store(device_picks)  # ... and last
        step_io.launched(k)
        return k

    steps = [run_step(torch.arange(12).reshape(4, 3) + 100 * i, [i, i + 1, i + 2]) for i in range(3)]
    assert steps == [0, 1, 2]
    # step 2 reused step 0's row of picks: step 0's were kept before, so nothing is lost
    assert step_io.picks(0) == [0, 1, 2]
    assert step_io.picks(1) == [1, 2, 3] and step_io.picks(2) == [2, 3, 4]
    run_step(torch.zeros(4, 3, dtype=torch.long), [7, 8, 9])  # step 1 was read: nothing kept for it
    assert step_io.picks(3) == [7, 8, 9] and not step_io._saved
    print("ok")
    """
)


def test_step_io_kernels_and_host_side_in_the_interpreter():
    assert run_in_interpreter(HOST_SIDE).startswith("ok")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA graphs")
def test_replayed_steps_with_step_io_decode_as_with_copies_cuda():
    """Greedy decode pipelined as the scheduler runs it (each step launched from the last one's picks on
    the device before those are read), with STEP_IO on and off: the same ids, every step."""
    from types import SimpleNamespace

    from pixdesk.engine import static
    from pixdesk.engine.cache import KVCache
    from pixdesk.engine.pipeline import launch_step
    from pixdesk.engine.sampling import SamplingParams
    from pixdesk.model.pixtral import Pixtral
    from pixdesk.weights.tiny import TINY_ARGS

    torch.manual_seed(0)
    model = Pixtral(TINY_ARGS).to("cuda", torch.bfloat16).eval()
    ids = {}
    try:
        for on in (True, False):
            static.STEP_IO = on
            torch._dynamo.reset()
            kv = KVCache.for_model(model, 2, 256)
            decoder = static.StaticDecoder(model, kv, bucket_size=64)
            assert (decoder.step_io is not None) == on
            seqs = [SimpleNamespace(slot=i, params=SamplingParams(max_tokens=100), mask=None) for i in (0, 1)]
            out = []
            with torch.inference_mode():
                step = launch_step(model, kv, decoder, seqs, torch.tensor([5, 9]), [0, 0])
                for i in range(1, 90):  # past the 64-key bucket: a capture in the middle of the pipeline
                    nxt = launch_step(model, kv, decoder, seqs, step.picks, [i, i], speculative=True)
                    out.append(step.host_picks())
                    step = nxt
                out.append(step.host_picks())
            ids[on] = out
    finally:
        static.STEP_IO = True
        torch._dynamo.reset()
    assert ids[True] == ids[False]
