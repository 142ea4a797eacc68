"""prepare: what runs are built from. images (content-tagged backend images),
engine_keys + engine_store + engines (TensorRT-LLM engines: what identifies one,
the on-disk cache, building them for a study), datasets (fetching pinned prompt sets)."""
