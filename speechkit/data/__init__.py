"""Data: manifests, feature caches, datasets, length-bucketed sampling and the Lightning data modules."""
