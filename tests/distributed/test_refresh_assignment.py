"""The greedy longest-processing-time assignment of refresh jobs, and the statistics shards'
generators.
"""

from __future__ import annotations

import itertools

import pytest

from natgrad.distributed import assign_jobs, process_shards, shard_seed


def loads(costs, owners, world_size):
    return [sum(c for c, o in zip(costs, owners) if o == r) for r in range(world_size)]


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_every_job_gets_exactly_one_owner_among_the_processes(world_size):
    costs = [
        float(d) ** 3
        for d in (785, 1000, 1001, 500, 501, 250, 251, 30, 31, 250, 251, 500, 501, 1000, 1001, 784)
    ]
    owners = assign_jobs(costs, world_size)
    assert len(owners) == len(costs) and set(owners) <= set(range(world_size))
    assert set(owners) == set(range(world_size))  # 16 jobs: every process gets work


def test_longest_jobs_first_each_to_the_least_loaded_process():
    # by hand: 7 -> 0; 5 -> 1; 4 -> 1 (load 5 < 7); 3 -> 0 (7 < 9); 1 -> 1 (9 < 10)
    costs = [3.0, 7.0, 1.0, 5.0, 4.0]
    assert assign_jobs(costs, 2) == [0, 0, 1, 1, 1]
    assert loads(costs, assign_jobs(costs, 2), 2) == [10.0, 10.0]


def test_the_assignment_is_within_lpt_bound_of_the_best_one():
    # Graham's bound: LPT's largest load is at most 4/3 - 1/(3W) times the optimum.
    costs = [8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0]
    best = min(
        max(loads(costs, owners, 3)) for owners in itertools.product(range(3), repeat=len(costs))
    )
    assert max(loads(costs, assign_jobs(costs, 3), 3)) <= (4 / 3 - 1 / 9) * best


def test_ties_go_to_the_lowest_rank_and_the_assignment_is_deterministic():
    assert assign_jobs([1.0, 1.0, 1.0, 1.0], 2) == [0, 1, 0, 1]
    assert assign_jobs([], 3) == []


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="world_size >= 1"):
        assign_jobs([1.0], 0)
    with pytest.raises(ValueError, match="costs >= 0"):
        assign_jobs([-1.0], 2)


def test_shard_zero_keeps_the_seed_and_the_others_are_distinct():
    assert shard_seed(7, 0) == 7
    seeds = {shard_seed(7, j) for j in range(1, 50)}
    assert len(seeds) == 49 and 7 not in seeds and all(0 <= s < 2**63 for s in seeds)


def test_process_shards_interleave_into_the_global_shards():
    # 2 processes x 2 shards: process 0 holds global shards 0, 2; process 1 holds 1, 3.
    assert process_shards(0, 2, 2) == [0, 2] and process_shards(1, 2, 2) == [1, 3]
    assert sorted(j for r in range(3) for j in process_shards(r, 3, 2)) == list(range(6))
