"""Helpers the tests import: float64 references, tiny models, argument sets, torchrun workers, hostile cases."""
