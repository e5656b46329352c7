"""Which database images each query is matched with: the first K of a given pairs file (e.g.
hloc's NetVLAD lists), or the K most similar by the GeM global descriptor of `d2_sfm.pairs`."""
from __future__ import annotations

import logging
from pathlib import Path

from ..datasets.formats import write_pairs
from ..h5io import list_h5_names, read_global_descriptors
from ..pair_selection import most_similar
from ..pairs import PairsConfig, compute_global_features
from . import LocalizationError

logger = logging.getLogger(__name__)


def top_k_retrieval(pairs: list[tuple[str, str]], queries: list[str], db_names: list[str], k: int, source: Path
                    ) -> dict[str, list[str]]:
    """{query: first k database images} of a pairs file (`query db` lines, best first)."""
    known_db, known_queries = set(db_names), set(queries)
    retrieval: dict[str, list[str]] = {q: [] for q in queries}
    unknown = set()
    for query, db_name in pairs:
        if query not in known_queries and db_name in known_queries:
            query, db_name = db_name, query
        if query not in known_queries or db_name not in known_db:
            unknown.add(query if query not in known_queries else db_name)
            continue
        if db_name not in retrieval[query] and len(retrieval[query]) < k:
            retrieval[query].append(db_name)
    if unknown:
        logger.warning("%s: %d names are neither queries nor database images of the dataset, e.g. %s "
                       "(their pairs are skipped)", source, len(unknown), sorted(unknown)[0])
    missing = [q for q, refs in retrieval.items() if not refs]
    if len(missing) == len(queries):
        raise LocalizationError(f"{source}: no line pairs a query of the dataset with a database image "
                                f"(expected 'query_name db_name' lines, names relative to the image folder)")
    if missing:
        logger.warning("%s: %d queries have no pair, e.g. %s (they will be failures)", source, len(missing), missing[0])
    return retrieval


def global_retrieval(image_dir: Path, queries: list[str], db_names: list[str], global_features: Path,
                     extractor, config: PairsConfig, k: int) -> dict[str, list[str]]:
    """{query: k most similar database images} by the GeM global descriptor of d2_sfm.pairs
    (computed into `global_features`, resumable); an unreadable image retrieves nothing."""
    compute_global_features(image_dir, queries + db_names, global_features, extractor, config)
    available = set(list_h5_names(global_features))
    db_names = [n for n in db_names if n in available]
    query_names = [q for q in queries if q in available]
    similarity = (read_global_descriptors(global_features, query_names)
                  @ read_global_descriptors(global_features, db_names).T)
    retrieval: dict[str, list[str]] = {q: [] for q in queries}
    for query, order in zip(query_names, most_similar(similarity, k)):
        retrieval[query] = [db_names[j] for j in order]
    return retrieval


def write_retrieval(path: Path, retrieval: dict[str, list[str]]) -> Path:
    """`query db` lines, best first, in hloc's pairs format (written atomically)."""
    return write_pairs(path, [(q, r) for q, refs in retrieval.items() for r in refs])
