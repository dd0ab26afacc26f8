"""Evaluation of frozen encoders: embeddings files, FAISS k-NN, linear probes.

`embed` writes one embeddings file per split; `knn` and `linear --protocol cached|logreg` read
those files, so extraction and scoring stay separate steps (as in DINO's eval_knn.py).
"""
