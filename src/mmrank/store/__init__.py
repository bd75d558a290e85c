"""The embedding index table, its ANN index, and real-time ingestion (Section 5, Figure 4 of the
CIKM'24 Taobao paper): a new item's vector reaches training and serving within a second of arrival.

Modules, in import order (each imports only those above it):

* :mod:`~mmrank.store.table`: the :class:`EmbeddingTable` interface every backend implements, version
  stamps, ``STORE.json``;
* :mod:`~mmrank.store.local` and :mod:`~mmrank.store.redis_table`: the two backends;
* :mod:`~mmrank.store.backends`: :func:`open_table` / :func:`create_table` on the run's backend;
* :mod:`~mmrank.store.ann`: the FAISS index;
* :mod:`~mmrank.store.encoding`: the encoder interface and the input checks that name the bad row;
* :mod:`~mmrank.store.items`: :class:`ItemStore`, search and ingestion;
* :mod:`~mmrank.store.stage`: :func:`embed_catalog` and the demo stage; :mod:`~mmrank.store.cli`.

Example::

    >>> from mmrank.store.backends import open_table
    >>> t = open_table(run / "embeddings")      # the CURRENT version, read-only  # doctest: +SKIP
    >>> t.version, t.dim, len(t), t.ids()[:3]                                   # doctest: +SKIP
    >>> t.get(item_ids)            # (N, dim) float32; KeyError names the first unknown id # doctest: +SKIP
    >>> t.get(item_ids, missing="zero")                                         # doctest: +SKIP
"""
