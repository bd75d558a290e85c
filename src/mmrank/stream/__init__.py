"""The event stream and the online joiner (near-line training, issue 31).

* :mod:`~mmrank.stream.events`: :class:`Event` (impression, click, cart, purchase, item_arrival), its
  wire form and validation;
* :mod:`~mmrank.stream.sources`: one source interface, two backends: :class:`ReplaySource` (a run's
  events in timestamp order, embedded, no server) and :class:`RedisSource` (Redis Streams with a
  consumer group); :func:`open_source`, :func:`produce`;
* :mod:`~mmrank.stream.joiner`: :class:`Joiner`, impressions joined with their labels within an
  attribution window, emitted in event time as CTR samples (the columns of
  :func:`mmrank.data.samples.build_ctr_samples`, plus ``event_id``);
* :mod:`~mmrank.stream.stage`: :func:`join_run` (`mmrank stream join`).
"""
