"""Frozen-encoder features and the k-NN search over them: extraction, the weighted vote, streamed search."""
