"""Trained eviction scorers (Locret's retaining heads, Attention-Gate's gates): weights store, training
corpus, feature capture and the training loops. Plaintext only."""
