"""Reserved for the synth stages (not built yet)."""
