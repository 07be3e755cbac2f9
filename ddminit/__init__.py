"""ddminit command of DDM."""
