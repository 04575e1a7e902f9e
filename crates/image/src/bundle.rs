//! OCI runtime config.json generation.
