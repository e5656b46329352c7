"""The strongly connected core that `reconstruct` keeps (scipy's connected components)."""
from d2_sfm.reconstruct import strongly_connected_core


def symmetric(edges: dict[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    graph: dict[str, dict[str, int]] = {}
    for (a, b), inliers in edges.items():
        graph.setdefault(a, {})[b] = inliers
        graph.setdefault(b, {})[a] = inliers
    return graph


def test_largest_group_over_strong_pairs_only():
    graph = symmetric({("a", "b"): 80, ("b", "c"): 60, ("c", "d"): 20, ("d", "e"): 90, ("x", "a"): 99})
    # c-d is weak, x is not a registered name: {a, b, c} beats {d, e}
    assert strongly_connected_core(["e", "d", "c", "b", "a"], graph, min_inliers=50) == {"a", "b", "c"}


def test_no_strong_pair_gives_an_empty_core():
    graph = symmetric({("a", "b"): 10})
    assert strongly_connected_core(["a", "b", "c"], graph, 50) == set()
    assert strongly_connected_core([], graph, 50) == set()


def test_ties_pick_the_group_with_the_alphabetically_first_name():
    graph = symmetric({("m", "n"): 70, ("b", "z"): 70})
    for names in (["m", "n", "b", "z"], ["z", "b", "n", "m"]):
        assert strongly_connected_core(names, graph, 50) == {"b", "z"}
