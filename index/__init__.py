"""The bottom layer: embedders, the FAISS vector store, and the base every package sits on (errors, paths).

`index.errors` and `index.paths` import nothing of turnout, so `models/` and `serve/` both build on this
package without an import circle. Import the modules themselves (`from index.embedder import load_embedder`);
this file imports nothing, so `import index.errors` stays cheap.
"""
