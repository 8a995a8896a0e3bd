"""megatron_reflect: Safety Reflection Pretraining on Megatron-Core."""
