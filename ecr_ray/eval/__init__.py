"""Generation metrics: text statistics, grounding and the LLM scorer."""
