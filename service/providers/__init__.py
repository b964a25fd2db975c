"""Push providers behind one small interface; each returns an outcome class (design brief §1)."""
