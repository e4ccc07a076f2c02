"""Declarative policy: the Policy schema and shipped presets."""
