"""interpret package."""
