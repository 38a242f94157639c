"""New DICOM UIDs under the organisation's root.

Result UIDs are *derived*: a hash of what the object is (source SOP Instance UID, bundle id and version, kind)
under the configured root. Building the results of one analysis twice (after a crash, say) gives the same UIDs,
so a PACS that already holds an object sees the same instance again, never a near-duplicate.
"""

from __future__ import annotations

from pydicom.uid import generate_uid

from edge.config import ResultsConfig, check_uid_root

__all__ = ["DEFAULT_ORG_ROOT", "UidFactory"]

DEFAULT_ORG_ROOT = ResultsConfig.org_root
"""pydicom's root, which anyone may use for generated UIDs. A manufacturer sets its own (``results.org_root``)."""


class UidFactory:
    """Makes UIDs under one root."""

    def __init__(self, org_root: str = DEFAULT_ORG_ROOT) -> None:
        self.org_root = check_uid_root(org_root)

    def derived(self, *parts: str) -> str:
        """The UID for ``parts`` (same parts, same UID; different parts, different UIDs)."""
        return str(generate_uid(prefix=self.org_root + ".", entropy_srcs=["\x1f".join(parts)]))
