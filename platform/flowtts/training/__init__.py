"""Training recipe in pure torch: frame-budget batching, optimizer and schedule, EMA, the step, state.

Nothing here imports Ray; the Ray Train loop (``trainer`` package) composes these pieces.
"""

from flowtts.training.batching import (
    BatchingError,
    BatchPosition,
    EpochPlan,
    FrameBatches,
    frame_budget_batches,
    padding_waste,
    shard_batches,
    shuffle_batches,
)
from flowtts.training.data import (
    Batch,
    BatchFeed,
    TrainingData,
    Utterance,
    collate,
    corpus_fingerprint,
    dataset_vocab,
    manifest_fingerprint,
)
from flowtts.training.recipe import Recipe, build_recipe, lr_factor
from flowtts.training.state import (
    TrainState,
    TrainStateError,
    load_train_state,
    read_train_state,
    restore_rank_rng,
    save_train_state,
)
from flowtts.training.step import StepResult, train_step

__all__ = [
    "Batch",
    "BatchFeed",
    "BatchPosition",
    "BatchingError",
    "EpochPlan",
    "FrameBatches",
    "Recipe",
    "StepResult",
    "TrainState",
    "TrainStateError",
    "TrainingData",
    "Utterance",
    "build_recipe",
    "collate",
    "corpus_fingerprint",
    "dataset_vocab",
    "frame_budget_batches",
    "load_train_state",
    "lr_factor",
    "manifest_fingerprint",
    "padding_waste",
    "read_train_state",
    "restore_rank_rng",
    "save_train_state",
    "shard_batches",
    "shuffle_batches",
    "train_step",
]
