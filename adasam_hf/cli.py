"""The GLUE command under its first name: `adasam_hf.glue.run` (``adasam_hf.cli.parse_args`` / ``finetune`` /
``main`` keep working)."""

from .glue.run import build_parser, finetune, main, parse_args

__all__ = ["build_parser", "finetune", "main", "parse_args"]
