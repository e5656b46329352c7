"""Tentative tracks from raw matches: a maximum spanning forest built Kruskal-style.

Nodes are (image, keypoint) pairs seen in at least one match, numbered globally as
`offsets[image] + keypoint`. Edges (matches) are merged by union-find in order of decreasing
match score; two components are never merged when they share an image, so a track holds at most
one keypoint per image. Each track's root (its fixed reference during refinement) is the node
whose intra-track edges have the largest summed score.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tracks:
    """Tracks over the global node numbering (only nodes in tracks of >= 2 nodes are listed)."""
    nodes: np.ndarray  # (M,) int64 global node ids
    track: np.ndarray  # (M,) int64 track index of each node, 0..T-1
    root: np.ndarray  # (T,) int64 global node id of each track's root
    edges: np.ndarray  # (E, 2) int64 intra-track edges (global ids), tree and non-tree
    edge_scores: np.ndarray  # (E,) float32

    @property
    def num_tracks(self) -> int:
        return len(self.root)


def node_image(nodes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Image index of each global node id; offsets (I + 1,) cumulative keypoint counts."""
    return np.searchsorted(offsets, nodes, side="right") - 1


def build_tracks(edges: np.ndarray, scores: np.ndarray, offsets: np.ndarray) -> Tracks:
    """Tracks from match edges (E, 2) of global node ids with scores (E,).

    Duplicate edges (a pair listed in both orders) are merged, keeping the highest score."""
    edges = np.sort(np.asarray(edges, np.int64).reshape(-1, 2), axis=1)
    scores = np.asarray(scores, np.float32).reshape(-1)
    keep = edges[:, 0] != edges[:, 1]
    edges, scores = edges[keep], scores[keep]
    order = np.lexsort((-scores, edges[:, 1], edges[:, 0]))  # per edge, best score first
    edges, scores = edges[order], scores[order]
    first = np.ones(len(edges), bool)
    first[1:] = (edges[1:] != edges[:-1]).any(axis=1)
    edges, scores = edges[first], scores[first]

    used, local = np.unique(edges, return_inverse=True)
    local = local.reshape(-1, 2)
    images = node_image(used, offsets)
    parent = list(range(len(used)))
    members: list[set[int] | None] = [{int(i)} for i in images]  # images of each component (at roots)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in local[np.argsort(-scores, kind="stable")].tolist():
        ra, rb = find(a), find(b)
        if ra == rb or not members[ra].isdisjoint(members[rb]):
            continue  # same track already, or the merge would put two keypoints of one image in it
        if len(members[ra]) < len(members[rb]):
            ra, rb = rb, ra
        parent[rb] = ra
        members[ra] |= members[rb]
        members[rb] = None

    component = np.array([find(i) for i in range(len(used))], np.int64)
    intra = component[local[:, 0]] == component[local[:, 1]]
    node_score = np.zeros(len(used), np.float64)
    np.add.at(node_score, local[intra, 0], scores[intra])
    np.add.at(node_score, local[intra, 1], scores[intra])

    in_track = np.zeros(len(used), bool)
    in_track[local[intra].reshape(-1)] = True
    roots_of, track = np.unique(component[in_track], return_inverse=True)
    track_nodes = np.flatnonzero(in_track)
    # root = highest node score per track (ties: lowest id)
    order = np.lexsort((track_nodes, -node_score[track_nodes], track))
    sorted_track = track[order]
    starts = np.flatnonzero(np.r_[True, sorted_track[1:] != sorted_track[:-1]])
    root = used[track_nodes[order[starts]]]
    return Tracks(nodes=used[track_nodes], track=track.astype(np.int64), root=root.astype(np.int64),
                  edges=used[local[intra]], edge_scores=scores[intra])
