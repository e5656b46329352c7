"""The one-product mutual NN equals the two-product reference (rows of desc0, then of desc1)."""
import torch
import torch.nn.functional as F

from d2_sfm.matching import MatcherConfig, match_descriptors, nearest_neighbours


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


def test_duplicate_descriptors_match_once():
    generator = torch.Generator().manual_seed(1)
    desc1 = F.normalize(torch.randn(50, 16, generator=generator), dim=1)
    desc0 = torch.cat([desc1[:10], desc1[:10]])  # e.g. D2's duplicate keypoints on tied channels
    matches0, _ = match_descriptors(desc0, desc1, MatcherConfig(chunk_size=7))
    assert matches0.tolist() == list(range(10)) + [-1] * 10
