"""Global concept deduplication, host side: the encoding plan and the keys it exchanges.

The two-process run (tests/distributed_c2lip_check.py, through tests/test_distributed.py) checks the model with
`global_concept_dedup=True` against one process on the concatenated batch.
"""

import random

import torch

from modeling_concept_clip.collator import token_keys
from modeling_concept_clip.distributed import plan_distinct_encoding


def check_plan(keys_per_process):
    plans = [plan_distinct_encoding(keys_per_process, rank) for rank in range(len(keys_per_process))]
    counts = plans[0].counts
    assert all(plan.counts == counts for plan in plans), "every process must compute the same plan"
    # The gathered table: each process's encoded keys, in rank order.
    table = [keys_per_process[rank][i] for rank, plan in enumerate(plans) for i in plan.encode]
    assert [len(plan.encode) for plan in plans] == counts
    distinct = {key for keys in keys_per_process for key in keys}
    assert sorted(table) == sorted(distinct), "each distinct key encoded exactly once"
    for rank, plan in enumerate(plans):
        assert [table[position] for position in plan.table_positions] == keys_per_process[rank]
    return counts


def test_plan_encodes_each_key_once_and_balances():
    # Keys 1 and 2 on both processes, 3 and 4 on one each: 2 + 2 instead of 3 + 3 encodings.
    assert check_plan([[1, 2, 3], [4, 2, 1]]) == [2, 2]
    # A key held by one process goes to it, whatever the load.
    assert check_plan([[1, 2, 3, 4], [5]]) == [4, 1]
    # A process without concepts encodes nothing and still gets a plan.
    assert check_plan([[7, 8], []]) == [2, 0]


def test_plan_on_random_batches():
    rng = random.Random(0)
    for _ in range(50):
        vocabulary = rng.randint(1, 40)
        check_plan([rng.sample(range(vocabulary), rng.randint(0, vocabulary)) for _ in range(rng.randint(1, 8))])
    # Keys that every process holds are spread evenly.
    assert check_plan([list(range(10))] * 3) == [4, 3, 3]


def test_token_keys_ignore_padding_and_separate_texts():
    ids = torch.tensor([[5, 8, 9, 0, 0], [5, 8, 7, 0, 0], [0, 5, 8, 9, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    keys = token_keys(ids, mask)
    assert keys[0] == token_keys(ids[:1, :3], mask[:1, :3])[0] == token_keys(ids[:1, :3])[0]
    assert len(set(keys)) == 3 and all(0 <= key < 2**63 for key in keys)
