"""MedSafetyWorld: a synthetic medical world with an exact safety oracle, where safe data
teaches unsafe behaviour, and the raw / filter / rewrite / reflect comparison built on it.

Specification: docs/MEDSAFETYWORLD.md (versioned by ``world_version``).
"""

from megatron_reflect.world.config import WORLD_VERSION, WorldConfig
from megatron_reflect.world.generator import World, generate_world

world_version = WORLD_VERSION

__all__ = ["WORLD_VERSION", "World", "WorldConfig", "generate_world", "world_version"]
