"""Frozen compute, done once: the feature cache, its batch sources, and the engines that fill it."""
