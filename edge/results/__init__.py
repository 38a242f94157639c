"""Clinical results out: DICOM result objects built from an analysis, queued and delivered to the clinic's PACS.

Data flow: an instance the pipeline marked ``analysed`` (its findings read through :mod:`~edge.results.analysis`)
-> :mod:`~edge.results.sr` (TID 1500 structured report), :mod:`~edge.results.gsps` (presentation state, when a
destination takes it) and :mod:`~edge.results.overlay` (Secondary Capture with the findings drawn), coded with
:mod:`~edge.results.codes`, named with :mod:`~edge.results.uids`, each given the same header by
:mod:`~edge.results.header` (patient and study from the source, series laterality, this box as equipment)
-> written durably under ``<data_dir>/results`` -> :mod:`~edge.results.queue` (one delivery row per object and
destination in ``edge.db``) -> :mod:`~edge.results.scu` (C-STORE). :mod:`~edge.results.service` runs it; the
destinations and what each takes are ``[results]`` in :mod:`edge.config`; the kinds a destination can take, the
order they are built and sent in, and each one's builder are :mod:`~edge.results.kinds`.
"""
