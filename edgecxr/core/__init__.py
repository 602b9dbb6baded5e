"""edgecxr/core."""
