"""edgecxr/stages/gate."""
