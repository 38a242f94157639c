"""The image store: received DICOM files on disk and their index in ``edge.db``.

:mod:`edge.store.image_store` (durable accept, quarantine, duplicates, crash recovery), :mod:`edge.store.index`
(the tables and the pipeline-state API), :mod:`edge.store.header` (what is read and checked from a dataset) and
:mod:`edge.store.retention` (pruning pixel data of finished studies).
"""
