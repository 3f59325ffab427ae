"""save / load of state dicts as .npz (never pickles)."""
