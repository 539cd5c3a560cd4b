//! Marker library; the end-to-end tests live in `tests/`.
