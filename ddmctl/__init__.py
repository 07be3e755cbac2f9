"""ddmctl command of DDM."""
