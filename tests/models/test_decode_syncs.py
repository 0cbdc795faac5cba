"""The decoding steps of ``generate`` read no tensor values on the host (no device synchronisation of ours per
token), while direct calls keep their value checks."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from wonderful_matrices.models import presets
from wonderful_matrices.models.modeling import CACHE_NAME, CheemsForCausalLM


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched inside it for which :meth:`counts` is true (all of them by default: host work,
    on a GPU each costs microseconds of the CPU)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def counts(self, func) -> bool:
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += self.counts(func)
        return func(*args, **(kwargs or {}))


class HostReads(OpCounter):
    """Counts reads of tensor values on the host (``.item()``, ``bool()``, ``int()``, ``.tolist()``)."""

    def counts(self, func) -> bool:
        return func is torch.ops.aten._local_scalar_dense.default


def counts_per_forward(model: CheemsForCausalLM, counter: type[OpCounter], **generate_kwargs) -> list[int]:
    """What ``counter`` counts in each forward call ``generate`` makes (the prompt first, then the decoding steps)."""
    counts, modes = [], []

    def start(module, args, kwargs):
        modes.append(counter())
        modes[-1].__enter__()

    def stop(module, args, kwargs, output):
        mode = modes.pop()
        mode.__exit__(None, None, None)
        counts.append(mode.count)

    hooks = [model.register_forward_pre_hook(start, with_kwargs=True),
             model.register_forward_hook(stop, with_kwargs=True)]
    try:
        model.generate(**generate_kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return counts


@pytest.mark.parametrize("options", [{}, {"mask": True}, {"num_beams": 2}, {"do_sample": True}],
                         ids=["greedy", "attention_mask", "beams", "sampling"])
@pytest.mark.parametrize("preset", ["cheems-tiny", "llama-tiny"])
def test_generate_steps_read_no_values(preset, options):
    torch.manual_seed(0)
    model = CheemsForCausalLM(presets.get(preset)).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    kwargs = {k: v for k, v in options.items() if k != "mask"}
    if options.get("mask"):
        kwargs["attention_mask"] = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7])
    counts = counts_per_forward(model, HostReads, input_ids=ids, max_new_tokens=6, min_new_tokens=6,
                               do_sample=kwargs.pop("do_sample", False), **kwargs)
    assert len(counts) == 6
    assert counts[1:] == [0] * 5  # the prompt's call may check its ids and mask; the steps fed back do not


def test_generate_tokens_unchanged_by_skipped_checks():
    torch.manual_seed(1)
    model = CheemsForCausalLM(presets.get("cheems-tiny")).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    mask = torch.tensor([[0, 0, 0] + [1] * 6, [1] * 9])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    # the same steps by hand, each call with its full checks
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, use_cache=True)
        cache, tokens = getattr(logits, CACHE_NAME), [logits.logits[:, -1].argmax(-1, keepdim=True)]
        for _ in range(4):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            step = model(tokens[-1], attention_mask=mask, cache=cache, use_cache=True)
            tokens.append(step.logits[:, -1].argmax(-1, keepdim=True))
    assert torch.equal(out[:, 9:], torch.cat(tokens, 1))


def test_direct_step_still_checks_ids():
    torch.manual_seed(0)
    model = CheemsForCausalLM(presets.get("cheems-tiny")).eval()
    with torch.no_grad():
        cache = getattr(model(torch.randint(0, 100, (1, 5)), use_cache=True), CACHE_NAME)
        with pytest.raises(ValueError, match="input_ids"):
            model(torch.tensor([[model.config.vocab_size]]), cache=cache, use_cache=True)


# ATen ops of one cheems-tiny decoding forward on the CPU (4 layers: 3 SSD, 1 DMA, 4 CDMoE). A regression guard with
# a little headroom over the count reached (640); the CDMoE layer's linears on (b, l, d) inputs took 668.
CHEEMS_TINY_STEP_OPS = 650


def test_cheems_tiny_decoding_step_aten_ops():
    torch.manual_seed(0)
    model = CheemsForCausalLM(presets.get("cheems-tiny")).eval()
    counts = counts_per_forward(model, OpCounter, inputs=torch.randint(0, model.config.vocab_size, (1, 9)),
                                max_new_tokens=4, min_new_tokens=4, do_sample=False)
    steps = counts[1:]
    assert len(steps) == 3 and len(set(steps[1:])) == 1, steps  # every step after the first does the same work
    assert steps[-1] <= CHEEMS_TINY_STEP_OPS, steps


@pytest.mark.parametrize("preset", ["cheems-tiny", "llama-tiny"])
def test_graphed_route_reads_no_more_values_than_eager(preset):
    # the steps generate feeds back skip the host checks on the GraphedDecoder route too (off CUDA it runs them
    # eagerly): the whole generation reads exactly as many values as the eager route (the prompt's checks and
    # transformers' own stopping check)
    torch.manual_seed(0)
    model = CheemsForCausalLM(presets.get(preset)).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7])
    reads, outputs = [], []
    for graphed in (False, True):
        with HostReads() as mode:
            outputs.append(model.generate(ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6,
                                          do_sample=False, graphed_decoding=graphed))
        reads.append(mode.count)
    assert torch.equal(outputs[0], outputs[1])
    assert reads[1] == reads[0]
