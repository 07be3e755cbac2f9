"""ddmverify command of DDM."""
