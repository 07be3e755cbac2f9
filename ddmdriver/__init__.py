"""ddmdriver: Docker Engine API over SSH and the archive relay."""
