"""Model bundles (manifest, verification) and the synthetic reference dental model."""
