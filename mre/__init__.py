"""mre-flow: fine-tuning, information-flow analysis and knowledgeable verbalizers for the
Mutual Reinforcement Effect (MRE) between text-level (TLI) and word-level (WLI) information."""

__version__ = "0.1.0"
