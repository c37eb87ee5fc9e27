"""Tag: the Tagger, its inputs (folders, lists, tars), writers, shard folders and engines."""
