"""Cloud Storage: moving records and exports to and from a bucket."""
