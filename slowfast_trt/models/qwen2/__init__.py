"""Qwen2 pieces shared by every model family: its config and its decoder layers."""
