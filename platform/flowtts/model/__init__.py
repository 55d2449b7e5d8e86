"""Model code: modules, backbones (DiT, UNetT, MMDiT) and the CFM wrapper. Never reads files."""

from flowtts.model.cfm import CFM, FlowLoss, SampleResult, build_model

__all__ = ["CFM", "FlowLoss", "SampleResult", "build_model"]
