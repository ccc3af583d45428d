"""Reserved for the raters stages (not built yet)."""
