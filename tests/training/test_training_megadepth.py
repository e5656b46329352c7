"""MegaDepth loader on a tiny fake scene written in the official preprocessed layout."""
import cv2
import h5py
import numpy as np
import pytest

from d2_sfm.training.megadepth import MegaDepthConfig, MegaDepthError, MegaDepthPairs, interpolate_depth

HEIGHT, WIDTH, FOCAL, PLANE_Z, BASELINE = 288, 320, 200.0, 5.0, 0.5
SHIFT = FOCAL * BASELINE / PLANE_Z  # camera 1 sees the fronto-parallel plane 20 px further left


def write_scene(root, with_points=True):
    """Cameras 0 and 1 look at a plane at depth 5 (camera 1 moved 0.5 right); camera 2 has camera
    0's pose but a depth map claiming 7, so every warp to or from it fails the depth check."""
    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]
    depth_values = [PLANE_Z, PLANE_Z, 7.0]
    image_paths, depth_paths = [], []
    for name, z in zip(names, depth_values):
        image_paths.append(f"Undistorted_SfM/fake/images/{name}.jpg")
        depth_paths.append(f"phoenix/S6/zl548/MegaDepth_v1/fake/dense0/depths/{name}.h5")
        (root / image_paths[-1]).parent.mkdir(parents=True, exist_ok=True)
        (root / depth_paths[-1]).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / image_paths[-1]), (rng.random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8))
        with h5py.File(root / depth_paths[-1], "w") as f:
            f["depth"] = np.full((HEIGHT, WIDTH), z, np.float32)
    k = np.array([[FOCAL, 0, WIDTH / 2], [0, FOCAL, HEIGHT / 2], [0, 0, 1]])
    poses = np.stack([np.eye(4)] * 3)
    poses[1, 0, 3] = -BASELINE  # cam_from_world: camera 1 centre at x = +0.5
    overlap = np.array([[1, 0.8, 0.9], [0.8, 1, 0.3], [0.9, 0.3, 1]])
    np.fill_diagonal(overlap, 0)
    info = dict(image_paths=np.array(image_paths, object), depth_paths=np.array(depth_paths, object),
                intrinsics=np.stack([k] * 3), poses=poses, overlap_matrix=overlap,
                scale_ratio_matrix=np.ones((3, 3)))
    if with_points:  # one 3D point seen by all: (x, y) per image, as the official preprocessing
        info["points3D_id_to_2D"] = np.array([{7: np.array([160.0, 144.0])}, {7: np.array([140.0, 144.0])},
                                              {7: np.array([160.0, 144.0])}], object)
        info["points3D_id_to_ndepth"] = np.array([{7: 0.025}] * 3, object)
    (root / "scene_info").mkdir()
    np.savez(root / "scene_info" / "fake.npz", **info)


@pytest.mark.parametrize("with_points", [True, False])
def test_depth_warped_correspondences_on_a_plane(tmp_path, with_points):
    write_scene(tmp_path, with_points)
    dataset = MegaDepthPairs(tmp_path, config=MegaDepthConfig(pairs_per_scene=6), seed=0)
    assert len(dataset) == 6
    seen = set()
    for index, pair in enumerate(dataset.pairs(0)):
        first, second = (p.split("/")[-1][0] for p in pair.image_paths)
        seen.add(first + second)
        assert {first, second} in ({"a", "b"}, {"a", "c"})  # overlap 0.3 (b, c) is not eligible
        sample = dataset[index]
        assert sample.image1.shape == sample.image2.shape == (3, 256, 256)
        corr = sample.correspondences
        if "c" in (first, second):
            assert len(corr) == 0  # |z_est - z_gt| = 2 > 0.05 everywhere
            continue
        assert len(corr) > 600
        # Reconstruct the crop offsets from one correspondence-free fact: pixel shift is exactly
        # +-SHIFT in x between the full images, so pos2 - pos1 must be constant and equal to it
        # plus the difference of the crops' origins (a multiple of 1 px).
        pixels1 = 8 * corr.cells1.numpy() + 3.5
        delta = corr.pixels2.numpy() - pixels1
        assert np.ptp(delta, axis=0).max() < 1e-3
        offset_x = delta[0, 1] - (-SHIFT if first == "a" else SHIFT)
        assert abs(offset_x - round(offset_x)) < 1e-3 and abs(delta[0, 0] - round(delta[0, 0])) < 1e-3
        if with_points:  # crops at (16, 32) in a and (16, 12) in b: the 20 px shift cancels exactly
            np.testing.assert_allclose(delta, 0, atol=1e-3)
    assert seen  # at least one pair drawn


def test_crops_are_centred_on_the_shared_point(tmp_path):
    write_scene(tmp_path)
    dataset = MegaDepthPairs(tmp_path, config=MegaDepthConfig(pairs_per_scene=4), seed=1)
    pair = dataset.pairs(0)[0]
    assert pair.centre_ij is not None
    np.testing.assert_allclose(pair.centre_ij[0], [144.0, 160.0 if pair.image_paths[0].endswith("a.jpg")
                                                     or pair.image_paths[0].endswith("c.jpg") else 140.0])


def test_interpolate_depth_rejects_holes_and_borders():
    depth = np.ones((4, 4), np.float32)
    depth[0, 0] = 0
    values, valid = interpolate_depth(depth, np.array([[0.5, 0.5], [2.0, 2.0], [2.5, 3.5], [1.2, 1.7]]))
    assert valid.tolist() == [False, True, False, True]
    assert values[1] == pytest.approx(1.0)


def test_missing_layout_is_a_clear_error(tmp_path):
    with pytest.raises(MegaDepthError, match="scene_info"):
        MegaDepthPairs(tmp_path)
    (tmp_path / "scene_info").mkdir()
    np.savez(tmp_path / "scene_info" / "bad.npz", image_paths=np.array(["x"]))
    with pytest.raises(MegaDepthError, match="lacks"):
        MegaDepthPairs(tmp_path)


def test_one_training_step_on_the_fake_scene(tmp_path):
    import torch

    from d2_sfm.model import D2Net
    from d2_sfm.training.trainer import TrainConfig, Trainer
    from d2_sfm.weights import save_checkpoint

    write_scene(tmp_path / "megadepth")
    torch.manual_seed(0)
    init = save_checkpoint(D2Net().state_dict(), tmp_path / "init.pth")
    config = TrainConfig(output=str(tmp_path / "run"), init=str(init), train_layers="conv4_3", steps=1,
                         batch_size=2, crop_size=128, megadepth=str(tmp_path / "megadepth"),
                         validation_data=None, log_every=1)
    trainer = Trainer(config)
    assert (tmp_path / "run" / "last.pth") == trainer.run()
    assert trainer.step == 1 and trainer.history[-1]["step"] == 1
