"""Megatron <-> Hugging Face Llama conversion: one declarative name map, streamed tensors,
parity checked by logits (see mapping.py, export.py, importer.py, verify.py)."""

from megatron_reflect.convert.export import export_checkpoint, read_reflection_format
from megatron_reflect.convert.importer import import_hf

__all__ = ["export_checkpoint", "import_hf", "read_reflection_format"]
