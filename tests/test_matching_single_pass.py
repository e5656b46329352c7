"""The one-product mutual NN equals the two-product reference (rows of desc0, then of desc1)."""
import pytest
import torch
import torch.nn.functional as F

from d2_sfm.matching import MatcherConfig, first_copies, match_descriptors, nearest_neighbours


def two_pass_reference(desc0, desc1, config):
    matches0, _ = nearest_neighbours(desc0, desc1, config)
    matches1, _ = nearest_neighbours(desc1, desc0, config)
    back = torch.full_like(matches0, -1)
    back[matches0 >= 0] = matches1[matches0[matches0 >= 0]]
    return torch.where(back == torch.arange(len(desc0)), matches0, -1)


def test_single_pass_equals_two_passes_across_chunks_and_thresholds():
    generator = torch.Generator().manual_seed(0)
    for n0, n1, chunk in ((300, 500, 64), (1000, 700, 4096), (1, 5, 3)):
        desc1 = F.normalize(torch.randn(n1, 64, generator=generator), dim=1)
        noisy = desc1[torch.randint(0, n1, (n0,), generator=generator)] + 0.3 * torch.randn(n0, 64, generator=generator)
        desc0 = F.normalize(noisy, dim=1)
        for distance in (None, 0.6):
            config = MatcherConfig(chunk_size=chunk, distance_threshold=distance)
            matches0, scores0 = match_descriptors(desc0, desc1, config)
            assert torch.equal(matches0, two_pass_reference(desc0, desc1, config))
            assert ((scores0 > 0) == (matches0 >= 0)).all()


@pytest.fixture(params=[1, 2, 4])
def threads(request):
    """Matmul blockings (and so float rounding) differ with the thread count and the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def duplicated_set():
    generator = torch.Generator().manual_seed(1)
    desc1 = F.normalize(torch.randn(50, 16, generator=generator), dim=1)
    return torch.cat([desc1[:10], desc1[:10]]), desc1  # e.g. D2's duplicate keypoints on tied channels


@pytest.mark.parametrize("chunk", [3, 7, 4096])
def test_duplicate_descriptors_match_once(threads, chunk):
    desc0, desc1 = duplicated_set()
    matches0, scores0 = match_descriptors(desc0, desc1, MatcherConfig(chunk_size=chunk))
    assert matches0.tolist() == list(range(10)) + [-1] * 10
    assert (scores0[10:] == 0).all() and (scores0[:10] > 0.99).all()
    matches1, _ = match_descriptors(desc1, desc0, MatcherConfig(chunk_size=chunk))
    assert matches1.tolist() == list(range(10)) + [-1] * 40  # the first copy is the match


def test_duplicates_without_mutual_check_share_the_first_copys_match(threads):
    desc0, desc1 = duplicated_set()
    matches0, _ = match_descriptors(desc0, desc1, MatcherConfig(chunk_size=7, mutual_check=False))
    assert matches0.tolist() == list(range(10)) * 2


def test_ratio_test_rejects_a_nearest_neighbour_with_an_exact_twin(threads):
    desc0, desc1 = duplicated_set()
    matches, _ = match_descriptors(desc1[:10], desc0, MatcherConfig(ratio_threshold=0.9))
    assert (matches == -1).all()
    matches, _ = match_descriptors(desc1[:10], desc1, MatcherConfig(ratio_threshold=0.9))
    assert matches.tolist() == list(range(10))


def test_first_copies_finds_exact_duplicates_only():
    desc = F.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(2)), dim=1)
    desc[4] = desc[1]
    desc[5] = torch.nextafter(desc[2], torch.full_like(desc[2], 2.0))  # one ulp away: distinct
    assert first_copies(desc).tolist() == [0, 1, 2, 3, 1, 5]
