"""The decode engine: the loop (`generator.SpeculativeGenerator`, `batch.DecodeBatch`), the models' sessions and
caches (`session`), draft trees (`tree`), acceptance (`verify`), sampling and HF-style request resolution
(`sampling`, `request`), stats and streaming, and the target-alone baseline (`target_only`). Nothing is imported
here: `specvlm.engine.tree` and the rest load on their own, so a light module can import one without the others."""
