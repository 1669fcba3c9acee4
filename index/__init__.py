"""Embedders and the FAISS vector store. Heavy libraries (torch, faiss) load on first use, not on import."""

from index.embedder import CachedEmbedder, Embedder, HashEmbedder, MiniLMEmbedder, load_embedder
from index.store import VectorStore

__all__ = ["CachedEmbedder", "Embedder", "HashEmbedder", "MiniLMEmbedder", "VectorStore", "load_embedder"]
