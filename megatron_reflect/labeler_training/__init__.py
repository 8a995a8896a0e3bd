"""Building, training, calibrating and measuring the embedded safety labeler.

Kept out of ``data/`` (which holds only what preprocessing runs): nothing here is imported
when a corpus is labelled.  ``corpus`` is the domain-diverse labelled set, ``frames`` the
framed requests and hard negatives built for the shift real corpora have, ``linear`` the
linear heads (the fast ``hashed`` family, and the previous MiniLM head), ``finetune`` the
fine-tuned encoder (the default), ``user_test`` the held-out test built like a user's corpus.
"""
