"""Attention-saliency information flow (text -> anchor -> target) for causal LMs."""

from mre.flow.engine import FLOW_ATTN_IMPLEMENTATION, FlowEngine, FlowResult

__all__ = ["FLOW_ATTN_IMPLEMENTATION", "FlowEngine", "FlowResult"]
