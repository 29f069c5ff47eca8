"""Interactive evaluation: an LLM plays the seeker of a logged ReDial dialogue and talks to a recommender (iEvaLM)."""
