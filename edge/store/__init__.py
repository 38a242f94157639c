"""The image store: received DICOM files on disk (:mod:`edge.store.files`) and their index in ``edge.db``
(:mod:`edge.store.index`), the identifiers read from a dataset (:mod:`edge.store.header`) and retention
(:mod:`edge.store.retention`)."""
