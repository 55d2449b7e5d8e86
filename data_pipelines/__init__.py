"""Ray Data pipelines: CSV + wav corpora -> validated 24 kHz log-mel shards (``pipeline``), and files of
utterances -> audio on an actor pool (``batch_synthesis``)."""

from data_pipelines.batch_input import InputError
from data_pipelines.batch_synthesis import BatchRequest, BatchResult, synthesize_batch
from data_pipelines.pipeline import PreprocessConfig, PreprocessResult, preprocess_corpus
from data_pipelines.reading import MetadataError, Reason
from data_pipelines.writing import OutputExistsError

__all__ = [
    "BatchRequest",
    "BatchResult",
    "InputError",
    "MetadataError",
    "OutputExistsError",
    "PreprocessConfig",
    "PreprocessResult",
    "Reason",
    "preprocess_corpus",
    "synthesize_batch",
]
