"""Chain layer: the InferenceHub artifact, its async client and events, signing, tx sending, log watching."""
