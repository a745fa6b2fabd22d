"""The lowest layer, shared by trainables and the orchestrator: the registry contract, user plugins,
config helpers (strict models, dotted keys, pydantic errors as one-line messages), file digests,
the repository root and offline checks. Imports nothing else of the project."""
