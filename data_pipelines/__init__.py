"""Ray Data pipelines: CSV + wav corpora -> validated 24 kHz log-mel shards (see ``pipeline``)."""

from data_pipelines.pipeline import PreprocessConfig, PreprocessResult, preprocess_corpus
from data_pipelines.reading import MetadataError, Reason
from data_pipelines.writing import OutputExistsError

__all__ = [
    "MetadataError",
    "OutputExistsError",
    "PreprocessConfig",
    "PreprocessResult",
    "Reason",
    "preprocess_corpus",
]
