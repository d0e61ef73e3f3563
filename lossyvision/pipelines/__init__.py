"""Sources, crop policies, shard writing + manifests, the Ray prepare job, training-time streaming."""
