"""Copy lifecycle: bytes in, copies made and checked, references."""
