"""edgecxr/stages."""
