"""Model loading shared by the raters and synth (loading.py): below both, importing neither."""
