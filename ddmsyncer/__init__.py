"""ddmsyncer command of DDM."""
