"""Post-training compatible with safety reflections (SFT on chat data whose targets carry reflections)."""
