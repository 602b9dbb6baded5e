"""edgecxr/stages/export."""
