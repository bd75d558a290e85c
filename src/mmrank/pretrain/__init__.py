"""Semantic-aware contrastive pre-training (CIKM'24 Sec. 3, Table 2) and the item encoder it produces.

* ``mmrank.pretrain.config``: ``PretrainConfig`` and the Table 2 variants;
* ``mmrank.pretrain.stage``: ``pretrain``, ``compare`` (Table 2), ``demo_stage``;
* ``mmrank.pretrain.cli``: `mmrank pretrain` and `mmrank pretrain compare`;
* ``mmrank.pretrain.losses``: InfoNCE (Eq. 1), MoCo queue, triplet, nested dims (importable alone);
* ``mmrank.pretrain.model``: item tower + text/image query towers;
* ``mmrank.pretrain.train``: the trainer (torchrun-ready, checkpoints, resume);
* ``mmrank.pretrain.evaluate``: Acc@N (Eq. 6) per query modality and nested dimension;
* ``mmrank.pretrain.item_encoder``: ``R/encoder/`` written and loaded (what later stages use).

Example::

    >>> from mmrank.pretrain.item_encoder import load_item_encoder
    >>> enc = load_item_encoder("runs/demo")                    # doctest: +SKIP
    >>> enc.encode_items(["red shirt"], [jpeg_bytes]).shape     # doctest: +SKIP
    (1, 256)
"""
