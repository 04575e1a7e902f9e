//! Overlay root filesystems for containers.
