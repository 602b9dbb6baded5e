"""edgecxr/stages/train."""
