//! Uses nothing: only its dependency graph matters.
