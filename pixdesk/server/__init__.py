"""The HTTP front: an OpenAI-compatible API, the task routes and the built-in chat page (see app.py)."""
