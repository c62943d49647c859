"""What TP ranks agree on (rank_agreement.agree): pure logic, no processes."""

from __future__ import annotations

from sglang_mint.residency.rank_agreement import RankView, agree


def test_only_reads_finished_on_every_rank_are_installed():
    views = [RankView({"a": None, "b": None}, [], 5.0), RankView({"a": None, "c": None}, [], 9.0)]
    agreed = agree(views)
    assert agreed.installs == ["a"] and agreed.failures == {}
    assert agreed.now == 5.0  # rank 0's clock


def test_a_read_failed_on_one_rank_fails_everywhere_with_its_message():
    views = [RankView({"a": None}), RankView({"a": "adapter 'a' (revision 1) could not be loaded: OSError: gone"})]
    agreed = agree(views)
    assert agreed.installs == [] and agreed.failures == {"a": views[1].finished["a"]}


def test_holds_are_released_once_every_rank_ended_them():
    agreed = agree([RankView({}, ["r1", "r2"]), RankView({}, ["r2", "r3"])])
    assert agreed.ended == ["r2"]


def test_the_same_views_give_the_same_answer_in_any_insertion_order():
    one = agree([RankView({"b": None, "a": None}), RankView({"a": None, "b": None})])
    two = agree([RankView({"a": None, "b": None}), RankView({"b": None, "a": None})])
    assert one.installs == two.installs == ["a", "b"]

