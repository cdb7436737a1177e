"""Pre-training data: documents from text files, NSP instances in memory-mapped shards, MLM masking."""
from .corpus import (
    WIKITEXT_SECTION,
    WIKITEXT_TITLE,
    iter_documents,
    python_docs_corpus,
    read_documents,
    split_sentences,
)
from .masking import MaskingCollator, PretrainingBatches, example_seed
from .pretraining import Instance, PretrainingDataset, build_shards, create_instances

__all__ = [
    "WIKITEXT_SECTION",
    "WIKITEXT_TITLE",
    "Instance",
    "MaskingCollator",
    "PretrainingBatches",
    "PretrainingDataset",
    "build_shards",
    "create_instances",
    "example_seed",
    "iter_documents",
    "python_docs_corpus",
    "read_documents",
    "split_sentences",
]
