"""scripts/peak_memory.py's replay of the allocator's history and its grouping by source line, on a synthetic trace
(the script itself needs a GPU)."""
from conftest import load_script


def frame(path, line, name):
    return {"filename": path, "line": line, "name": name}


LOSS = [frame("/x/src/wonderful_matrices/ops/loss.py", 60, "forward"), frame("/x/torch/nn/module.py", 1, "call")]
MLP = [frame("/x/src/wonderful_matrices/layers/mlp.py", 34, "forward")]


def test_blocks_alive_at_the_peak_grouped_by_source_line():
    script = load_script("peak_memory")
    events = [
        {"action": "alloc", "addr": 1, "size": 100, "frames": MLP},
        {"action": "alloc", "addr": 2, "size": 300, "frames": LOSS},
        {"action": "free_requested", "addr": 2, "size": 300},  # not yet free: counts until free_completed
        {"action": "alloc", "addr": 3, "size": 50, "frames": LOSS},
        {"action": "free_completed", "addr": 2, "size": 300},
        {"action": "alloc", "addr": 4, "size": 200, "frames": []},  # 350 alive: below the peak of 450
        {"action": "free_completed", "addr": 99, "size": 7},  # a block from before the history: ignored
    ]
    peak, blocks = script.alive_at_peak(events)
    assert peak == 450 and sorted(blocks) == [1, 2, 3]
    assert script.by_source(blocks) == [(350, 2, "loss.py:60:forward"), (100, 1, "mlp.py:34:forward")]
    assert script.by_source({4: events[5]}) == [(200, 1, "?")]
