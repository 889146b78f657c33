"""Content-addressed storage: chunking, hashing, compression, packs, the chunk index."""
