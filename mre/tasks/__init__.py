"""LightningModules: the generative MRE task (causal LMs) and the few-shot prompt classifier (T5)."""
