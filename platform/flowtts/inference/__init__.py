"""Sampling backends (eager, ``torch.compile``, ONNX Runtime) and the export of the guided step."""

from flowtts.inference.backends import BACKENDS, BackendError, SamplingBackend, make_backend

__all__ = ["BACKENDS", "BackendError", "SamplingBackend", "make_backend"]
