"""Templates ``hub new-plugin`` writes a vendor package from (see hub/scaffold.py)."""
