"""OpenAI-compatible LLMs as a tool: the client discipline, the answer cache, the local server."""
