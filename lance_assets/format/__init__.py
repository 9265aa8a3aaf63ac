"""Bytes to objects and back: pure functions over bytes and protobuf messages.

Nothing in this package opens a file, talks to fsspec, reads a clock or draws
random numbers; callers pass bytes in and get bytes or messages out.
"""
