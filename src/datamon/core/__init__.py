"""Pure layer: ids, value objects and codecs. No I/O."""
