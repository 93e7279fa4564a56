"""Decoding: `reader` (decord, sampling plans) runs inside `process`, a child process that contains native crashes."""
